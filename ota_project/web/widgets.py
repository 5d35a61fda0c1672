"""Small page widgets as plain data: a moment in time, a progress bar, a status badge, a confirmed action.

Each function decides what a widget shows (text, numbers, CSS class names chosen from data); the templates in
templates/includes/widgets/ hold the markup and escape everything they print.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from ota_project.web.charts import as_number, humanize_status
from ota_project.web.zones import as_utc, shown_time, utc_time, viewer_zone, zone_name

EMPTY = "—"
_counter = itertools.count(1)


def page_unique_id(prefix: str) -> str:
    """An id for label/aria references that stays unique when a widget appears several times on a page."""
    return f"{prefix}-{next(_counter)}"


@dataclass(frozen=True)
class Moment:
    """A point in time as shown: `machine` is the <time datetime> value in UTC ("" when there is no time to mark
    up), `text` the time on the viewer's clock with its zone, `utc_text` the same instant in UTC (the hover text),
    `zone` the IANA name the text was rendered in (app.js re-renders when the browser's zone differs)."""

    machine: str
    text: str
    utc_text: str = ""
    zone: str = ""


def moment_data(value: datetime | date | None) -> Moment:
    """A datetime on the viewer's clock (ota_project.web.zones), a date as it is, "—" for nothing, any other value
    as its text."""
    if value is None or value == "":
        return Moment("", EMPTY)
    if isinstance(value, datetime):
        utc = as_utc(value)
        return Moment(utc.isoformat().replace("+00:00", "Z"), shown_time(utc), utc_time(utc), zone_name(viewer_zone()))
    if isinstance(value, date):
        return Moment(value.isoformat(), value.isoformat())
    return Moment("", str(value))


@dataclass(frozen=True)
class ProgressBar:
    """A progress bar: `now` is the aria value (capped at the total), `percent` the filled width."""

    label: str
    done: int
    total: int
    now: int
    percent: str


def progress_data(done: Any, total: Any, label: str = "Progress") -> ProgressBar:
    """Counts below zero count as zero; a zero total is an empty bar, not a division error."""
    done_n = max(int(as_number(done)), 0)
    total_n = max(int(as_number(total)), 0)
    percent = 0.0 if total_n == 0 else min(100.0, 100.0 * done_n / total_n)
    return ProgressBar(label, done_n, total_n, min(done_n, total_n) if total_n else done_n, f"{percent:.1f}")


@dataclass(frozen=True)
class Badge:
    """A status badge: its label and the CSS suffix that colours it (badge-<css>)."""

    css: str
    label: str


def badge_data(value: Any, label: str | None = None) -> Badge | None:
    """The status value, lowercased and stripped to [a-z0-9_-], becomes the class; None shows no badge."""
    if value is None or value == "":
        return None
    raw = str(getattr(value, "value", value))
    css = re.sub(r"[^a-z0-9_-]", "", raw.lower()) or "neutral"
    return Badge(css, str(label or humanize_status(value)))


@dataclass(frozen=True)
class ConfirmAction:
    """A POST form behind a confirmation step: what the button, the question and the reason field say."""

    url: str
    label: str
    prompt: str
    confirm_label: str
    field_id: str
    field_name: str
    field_label: str
    reason_required: bool
    danger: bool
    hidden: tuple[tuple[str, str], ...]

    @property
    def summary_class(self) -> str:
        return "btn btn-danger" if self.danger else "btn btn-secondary"

    @property
    def button_class(self) -> str:
        return "btn btn-danger" if self.danger else "btn btn-primary"


def confirm_action_data(
    url: str, label: str, *, reason_required: bool = True, danger: bool = False, options: Mapping[str, Any]
) -> ConfirmAction:
    """Options: field_name, field_label, prompt, confirm_label, and hidden_<name>=value for extra hidden inputs."""
    return ConfirmAction(
        url=str(url),
        label=str(label),
        prompt=str(options.get("prompt", f"{label}: are you sure? This is recorded with your name.")),
        confirm_label=str(options.get("confirm_label", f"Confirm: {label}")),
        field_id=page_unique_id("confirm"),
        field_name=str(options.get("field_name", "reason")),
        field_label=str(options.get("field_label", "Reason")),
        reason_required=bool(reason_required),
        danger=bool(danger),
        hidden=tuple(
            (name[len("hidden_") :], str(value)) for name, value in options.items() if name.startswith("hidden_")
        ),
    )
