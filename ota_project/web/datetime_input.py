"""The one date-and-time input of the pages: `YYYY-MM-DD HH:MM`, 24-hour, on the viewer's clock with the zone shown
next to it; parsed in the zone it was shown in (sent back in a hidden field), stored in UTC.

An explicit suffix wins over the zone: `Z`, `UTC` or an offset (`+01:00`), which is also how a time that happens
twice (the hour the clocks go back) is told apart. A local time the clocks skip, an impossible date or any other
shape is a field error that says what to type; nothing else is guessed.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, tzinfo
from datetime import timezone as fixed_zone
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from ota_project.web.zones import as_utc, in_viewer_zone, utc_offset_text, viewer_zone, zone_name, zone_named

SHOWN_FORMAT = "%Y-%m-%d %H:%M"
EXAMPLE = "2026-03-29 14:30"
_SHAPE = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})[ T](?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?"
    r"\s*(?P<suffix>Z|UTC|[+-]\d{2}:?\d{2})?$",
    re.IGNORECASE,
)


class ZonedText(str):
    """The typed text of a zoned input together with the zone name it was shown in (from the hidden field)."""

    zone: str = ""


def _zone_of_suffix(suffix: str) -> tzinfo:
    if suffix.upper() in ("Z", "UTC"):
        return UTC
    sign = -1 if suffix[0] == "-" else 1
    digits = suffix[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:])
    if hours > 14 or minutes > 59:
        raise ValidationError(f"{suffix} is not an offset from UTC (from -14:00 to +14:00).", code="invalid")
    return fixed_zone(sign * timedelta(hours=hours, minutes=minutes))


def parse_shown_time(text: str, zone: tzinfo) -> datetime:
    """`YYYY-MM-DD HH:MM[:SS][Z|UTC|±HH:MM]` on the clock of `zone` (or of the suffix) -> an aware UTC datetime."""
    match = _SHAPE.match(text.strip())
    if match is None:
        raise ValidationError(
            f"Enter the date and time as YYYY-MM-DD HH:MM, 24-hour (for example {EXAMPLE}).", code="invalid"
        )
    second = match["second"] or "00"
    try:
        naive = datetime.strptime(f"{match['date']} {match['hour']}:{match['minute']}:{second}", "%Y-%m-%d %H:%M:%S")
    except ValueError:
        raise ValidationError(
            f"{match['date']} {match['hour']}:{match['minute']} is not a real date and time "
            "(months 01-12, days of the month, hours 00-23, minutes 00-59).",
            code="invalid",
        ) from None
    if match["suffix"]:
        return naive.replace(tzinfo=_zone_of_suffix(match["suffix"])).astimezone(UTC)
    earlier, later = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    name = zone_name(zone)
    if earlier.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != naive:
        raise ValidationError(
            f"{naive:{SHOWN_FORMAT}} does not exist in {name}: the clocks skip it. Enter a time after the change.",
            code="nonexistent",
        )
    if earlier.utcoffset() != later.utcoffset():
        raise ValidationError(
            f"{naive:{SHOWN_FORMAT}} happens twice in {name} (the clocks go back). Add the offset you mean: "
            f"{naive:{SHOWN_FORMAT}}{utc_offset_text(earlier.tzinfo or zone, earlier)[3:]} or "
            f"{naive:{SHOWN_FORMAT}}{utc_offset_text(later.tzinfo or zone, later)[3:]}.",
            code="ambiguous",
        )
    return earlier.astimezone(UTC)


class ZonedDateTimeInput(forms.TextInput):
    """A text input showing `YYYY-MM-DD HH:MM` on the viewer's clock, the zone beside it, and the zone's name in a
    hidden field so the value is read back on the same clock it was shown on."""

    template_name = "ota_project/widgets/zoned_datetime.html"  # an app template: the form renderer reads app dirs

    def __init__(self, attrs: dict[str, Any] | None = None) -> None:
        super().__init__(
            attrs={
                "placeholder": "YYYY-MM-DD HH:MM",
                "inputmode": "numeric",
                "autocomplete": "off",
                "spellcheck": "false",
                "size": "22",
                **(attrs or {}),
            }
        )

    def format_value(self, value: Any) -> str | None:
        if isinstance(value, datetime):
            local = in_viewer_zone(value)
            return local.strftime(SHOWN_FORMAT if local.second == 0 else SHOWN_FORMAT + ":%S")
        return super().format_value(value)

    def value_from_datadict(self, data: Any, files: Any, name: str) -> Any:
        text = data.get(name)
        if text is None:
            return None
        typed = ZonedText(text)
        typed.zone = str(data.get(f"{name}_zone") or "")
        return typed

    def value_omitted_from_data(self, data: Any, files: Any, name: str) -> bool:
        return name not in data

    def get_context(self, name: str, value: Any, attrs: dict[str, Any] | None) -> dict[str, Any]:
        context = super().get_context(name, value, attrs)
        zone = zone_named(getattr(value, "zone", "")) or viewer_zone()
        widget = context["widget"]
        element_id = widget["attrs"].get("id") or name
        described = [f"{element_id}_zone"]
        if widget["attrs"].get("aria-describedby"):
            described.append(widget["attrs"]["aria-describedby"])
        widget["attrs"]["aria-describedby"] = " ".join(described)
        widget["zone_name"] = zone_name(zone)
        # The offset at the shown value's instant (summer and winter differ), now for an empty field.
        widget["zone_offset"] = utc_offset_text(zone, value if isinstance(value, datetime) else None)
        widget["zone_field"] = f"{name}_zone"
        widget["zone_id"] = f"{element_id}_zone"
        return context


class ZonedDateTimeField(forms.DateTimeField):
    """A date and time typed on the viewer's clock (see module docstring); cleaned to an aware UTC datetime."""

    widget = ZonedDateTimeInput

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("help_text", f"24-hour, YYYY-MM-DD HH:MM (for example {EXAMPLE}).")
        super().__init__(**kwargs)

    def to_python(self, value: Any) -> datetime | None:
        if value in self.empty_values:
            return None
        if isinstance(value, datetime):
            return as_utc(value)
        zone_text = getattr(value, "zone", "")
        zone = zone_named(zone_text) if zone_text else viewer_zone()
        if zone is None:
            raise ValidationError(f"Unknown time zone {zone_text[:64]!r}: reload the page.", code="invalid_zone")
        return parse_shown_time(str(value), zone)

    def prepare_value(self, value: Any) -> Any:
        return value

    def has_changed(self, initial: Any, data: Any) -> bool:
        try:
            typed = self.to_python(data)
        except ValidationError:
            return True
        initial_value = as_utc(initial).replace(microsecond=0) if isinstance(initial, datetime) else initial
        return initial_value != typed
