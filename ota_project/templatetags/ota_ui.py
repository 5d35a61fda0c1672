"""Shared UI template tags: local times, progress bars, inline SVG charts, status badges, confirmed actions.

Everything is rendered on the server (no chart library, nothing from a CDN); every chart carries a
visually-hidden table with the same numbers for screen readers, and every label is escaped.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any

from django import template
from django.http import HttpRequest
from django.middleware.csrf import get_token
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from ota_project.roles import Role, roles_of
from ota_project.web.nav import nav_items
from ota_project.web.text import describe_duration

register = template.Library()

EMPTY = "—"
_counter = itertools.count(1)

# Colours for series named after statuses (stacked bars of device states); others take the palette in order.
# All have at least 3:1 contrast against white, as WCAG asks of graphical objects.
STATUS_COLOURS = {
    "succeeded": "#2e7d32",
    "completed": "#2e7d32",
    "approved": "#2e7d32",
    "passed": "#2e7d32",
    "active": "#2e7d32",
    "failed": "#c62828",
    "timed_out": "#8e24aa",
    "rolled_back": "#6d4c41",
    "halted": "#c62828",
    "aborted": "#c62828",
    "rejected": "#c62828",
    "quarantined": "#ad6800",
    "pending": "#78909c",
    "offered": "#5c6bc0",
    "downloading": "#1e88e5",
    "downloaded": "#1565c0",
    "installing": "#00838f",
    "rebooting": "#00695c",
    "confirming": "#558b2f",
    "cancelled": "#616161",
    "skipped": "#9e9e9e",
    "paused": "#ad6800",
    "running": "#1565c0",
}
PALETTE = ("#1f5fbf", "#e0711a", "#2e7d32", "#8e24aa", "#c62828", "#00838f", "#6d4c41", "#5c6bc0", "#ad6800")

# Chart geometry (SVG user units; the SVG scales to its container).
CHART_WIDTH = 640
BAR_LABEL_WIDTH = 170
BAR_VALUE_WIDTH = 70
BAR_HEIGHT = 20
BAR_GAP = 10
LABEL_MAX_CHARS = 26


def _uid(prefix: str) -> str:
    """A page-unique id for aria references (several charts may share a page)."""
    return f"{prefix}-{next(_counter)}"


def _short(label: str, limit: int = LABEL_MAX_CHARS) -> str:
    """Shorten a label for the SVG (the full label stays in the <title> and the data table)."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _number(value: Any) -> float:
    """A chart value as a float (None and non-numbers count as 0)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _fmt(value: float) -> str:
    """Numbers as people read them: integers without decimals, others with at most two."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def _empty_state(title: str, message: str = "No data yet.") -> SafeString:
    return format_html('<div class="empty-state chart-empty"><p><strong>{}</strong></p><p>{}</p></div>', title, message)


def _as_utc(value: datetime) -> datetime:
    if timezone.is_naive(value):
        value = timezone.make_aware(value, UTC)
    return value.astimezone(UTC)


@register.simple_tag
def when(value: datetime | date | None) -> SafeString:
    """<time> in UTC that app.js rewrites to the viewer's time zone (UTC on hover); "—" for None."""
    if value is None or value == "":
        return mark_safe(EMPTY)
    if isinstance(value, datetime):
        utc = _as_utc(value)
        iso = utc.isoformat().replace("+00:00", "Z")
        text = utc.strftime("%Y-%m-%d %H:%M UTC")
        return format_html('<time datetime="{}" title="{}" data-utc="1">{}</time>', iso, text, text)
    if isinstance(value, date):
        return format_html('<time datetime="{}">{}</time>', value.isoformat(), value.isoformat())
    return format_html("{}", value)


@register.simple_tag
def progress(done: Any, total: Any, label: str = "Progress") -> SafeString:
    """Accessible progress bar (role=progressbar with aria values) and the text "done/total"."""
    done_n = max(int(_number(done)), 0)
    total_n = max(int(_number(total)), 0)
    percent = 0.0 if total_n == 0 else min(100.0, 100.0 * done_n / total_n)
    return format_html(
        '<div class="progress">'
        '<div class="progress-track" role="progressbar" aria-label="{}" aria-valuemin="0" aria-valuemax="{}" '
        'aria-valuenow="{}" aria-valuetext="{} of {}">'
        '<div class="progress-fill" style="width: {}%"></div></div>'
        '<span class="progress-text">{}/{}</span></div>',
        label,
        total_n,
        min(done_n, total_n) if total_n else done_n,
        done_n,
        total_n,
        f"{percent:.1f}",
        done_n,
        total_n,
    )


def _hidden_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> SafeString:
    head = format_html_join("", '<th scope="col">{}</th>', ((h,) for h in headers))
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        (
            (
                format_html(
                    '<th scope="row">{}</th>{}',
                    row[0],
                    format_html_join("", "<td>{}</td>", ((cell,) for cell in row[1:])),
                ),
            )
            for row in rows
        ),
    )
    return format_html(
        '<table class="visually-hidden"><caption>{}</caption><thead><tr>{}</tr></thead><tbody>{}</tbody></table>',
        title,
        head,
        body,
    )


@register.simple_tag
def bar_chart(rows: Iterable[tuple[Any, Any]] | None, title: str = "") -> SafeString:
    """Horizontal bars for (label, value) rows as inline SVG, plus the same numbers as a hidden table."""
    data = [(str(label), _number(value)) for label, value in (rows or [])]
    if not data:
        return _empty_state(title)
    peak = max((value for _, value in data), default=0.0) or 1.0
    plot = CHART_WIDTH - BAR_LABEL_WIDTH - BAR_VALUE_WIDTH
    height = len(data) * (BAR_HEIGHT + BAR_GAP) + BAR_GAP
    bars = []
    for index, (label, value) in enumerate(data):
        y = BAR_GAP + index * (BAR_HEIGHT + BAR_GAP)
        width = max(0.0, plot * value / peak)
        bars.append(
            format_html(
                '<g class="bar"><title>{}: {}</title>'
                '<text x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>'
                '<rect x="{}" y="{}" width="{}" height="{}" rx="2" fill="{}"></rect>'
                '<text class="value-label" x="{}" y="{}" dominant-baseline="middle">{}</text></g>',
                label,
                _fmt(value),
                BAR_LABEL_WIDTH - 8,
                y + BAR_HEIGHT / 2,
                _short(label),
                BAR_LABEL_WIDTH,
                y,
                f"{width:.1f}",
                BAR_HEIGHT,
                PALETTE[0],
                f"{BAR_LABEL_WIDTH + width + 6:.1f}",
                y + BAR_HEIGHT / 2,
                _fmt(value),
            )
        )
    return format_html(
        '<figure class="chart bar-chart"><figcaption>{}</figcaption>'
        '<svg viewBox="0 0 {} {}" width="{}" height="{}" aria-hidden="true" focusable="false" '
        'preserveAspectRatio="xMinYMin meet">{}</svg>{}</figure>',
        title,
        CHART_WIDTH,
        height,
        CHART_WIDTH,
        height,
        mark_safe("".join(bars)),
        _hidden_table(title, ["Label", "Value"], [(label, _fmt(value)) for label, value in data]),
    )


def _series_list(series: Iterable[Any] | None) -> list[tuple[str, str]]:
    """Series as (key, label): plain names label themselves ("timed_out" -> "Timed out")."""
    result = []
    for item in series or []:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            result.append((str(item[0]), str(item[1])))
        else:
            result.append((str(item), humanize_status(item)))
    return result


def _colour(key: str, index: int) -> str:
    return STATUS_COLOURS.get(key, PALETTE[index % len(PALETTE)])


@register.simple_tag
def stacked_bars(
    rows: Iterable[tuple[Any, Mapping[str, Any]]] | None, series: Iterable[Any] | None, title: str = ""
) -> SafeString:
    """Stacked horizontal bars: one bar per row label, one segment per series, a legend and a hidden table."""
    keys = _series_list(series)
    data = [(str(label), {key: _number((values or {}).get(key)) for key, _ in keys}) for label, values in rows or []]
    if not data or not keys:
        return _empty_state(title)
    totals = [sum(values.values()) for _, values in data]
    peak = max(totals) or 1.0
    plot = CHART_WIDTH - BAR_LABEL_WIDTH - BAR_VALUE_WIDTH
    height = len(data) * (BAR_HEIGHT + BAR_GAP) + BAR_GAP
    groups = []
    for index, ((label, values), total) in enumerate(zip(data, totals, strict=True)):
        y = BAR_GAP + index * (BAR_HEIGHT + BAR_GAP)
        x = float(BAR_LABEL_WIDTH)
        segments = []
        for series_index, (key, series_label) in enumerate(keys):
            value = values[key]
            if value <= 0:
                continue
            width = plot * value / peak
            segments.append(
                format_html(
                    '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{} – {}: {}</title></rect>',
                    f"{x:.1f}",
                    y,
                    f"{width:.1f}",
                    BAR_HEIGHT,
                    _colour(key, series_index),
                    label,
                    series_label,
                    _fmt(value),
                )
            )
            x += width
        groups.append(
            format_html(
                '<g class="stack"><text x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>{}'
                '<text class="value-label" x="{}" y="{}" dominant-baseline="middle">{}</text></g>',
                BAR_LABEL_WIDTH - 8,
                y + BAR_HEIGHT / 2,
                _short(label),
                mark_safe("".join(segments)),
                f"{x + 6:.1f}",
                y + BAR_HEIGHT / 2,
                _fmt(total),
            )
        )
    legend = format_html_join(
        "",
        '<li><span class="swatch" style="background: {}" aria-hidden="true"></span>{}</li>',
        ((_colour(key, index), series_label) for index, (key, series_label) in enumerate(keys)),
    )
    table = _hidden_table(
        title,
        ["Label", *[series_label for _, series_label in keys], "Total"],
        [
            (label, *[_fmt(values[key]) for key, _ in keys], _fmt(total))
            for (label, values), total in zip(data, totals, strict=True)
        ],
    )
    return format_html(
        '<figure class="chart stacked-bars"><figcaption>{}</figcaption>'
        '<svg viewBox="0 0 {} {}" width="{}" height="{}" aria-hidden="true" focusable="false" '
        'preserveAspectRatio="xMinYMin meet">{}</svg><ul class="legend">{}</ul>{}</figure>',
        title,
        CHART_WIDTH,
        height,
        CHART_WIDTH,
        height,
        mark_safe("".join(groups)),
        legend,
        table,
    )


def _nice_scale(low: float, high: float, ticks: int = 4) -> tuple[float, float, float]:
    """Axis bounds and step on round numbers (1, 2, 2.5 or 5 times a power of ten) covering low..high."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


LINE_HEIGHT = 240
LINE_LEFT = 56
LINE_RIGHT = 110
LINE_TOP = 16
LINE_BOTTOM = 36


@register.simple_tag
def line_chart(
    series: Iterable[Mapping[str, Any]] | None,
    title: str = "",
    threshold: Any = None,
    y_label: str = "",
) -> SafeString:
    """Lines over time for [{"label", "points": [(datetime, value)]}], an optional dashed threshold line."""
    lines = []
    for item in series or []:
        points = sorted(
            ((_as_utc(when_), _number(value)) for when_, value in (item.get("points") or []) if when_ is not None),
            key=lambda point: point[0],
        )
        if points:
            lines.append((str(item.get("label", "")), points))
    if not lines:
        return _empty_state(title, "No measurements yet.")
    limit = None if threshold is None or threshold == "" else _number(threshold)
    all_points = [point for _, points in lines for point in points]
    start = min(when_ for when_, _ in all_points)
    end = max(when_ for when_, _ in all_points)
    span = (end - start).total_seconds() or 1.0
    values = [value for _, value in all_points] + ([limit] if limit is not None else [])
    low, high, step = _nice_scale(min(0.0, min(values)), max(values))
    plot_w = CHART_WIDTH - LINE_LEFT - LINE_RIGHT
    plot_h = LINE_HEIGHT - LINE_TOP - LINE_BOTTOM

    def x_of(moment: datetime) -> float:
        return LINE_LEFT + plot_w * (moment - start).total_seconds() / span

    def y_of(value: float) -> float:
        return LINE_TOP + plot_h * (1 - (value - low) / (high - low))

    parts: list[str] = []
    ticks = int(round((high - low) / step))
    for tick in range(ticks + 1):
        value = low + step * tick
        y = y_of(value)
        parts.append(
            format_html(
                '<line class="grid-line" x1="{}" x2="{}" y1="{}" y2="{}"></line>'
                '<text x="{}" y="{}" text-anchor="end" dominant-baseline="middle">{}</text>',
                LINE_LEFT,
                LINE_LEFT + plot_w,
                f"{y:.1f}",
                f"{y:.1f}",
                LINE_LEFT - 6,
                f"{y:.1f}",
                _fmt(round(value, 2)),
            )
        )
    bottom = LINE_TOP + plot_h
    # Short spans (a soak of minutes) need seconds to tell the ends apart; long ones need the day.
    time_format = "%H:%M:%S UTC" if span < 3600 else "%d %b %H:%M UTC"
    parts.append(
        format_html(
            '<line class="axis" x1="{}" x2="{}" y1="{}" y2="{}"></line>'
            '<text x="{}" y="{}" text-anchor="start">{}</text>'
            '<text x="{}" y="{}" text-anchor="end">{}</text>',
            LINE_LEFT,
            LINE_LEFT + plot_w,
            bottom,
            bottom,
            LINE_LEFT,
            bottom + 18,
            start.strftime(time_format),
            LINE_LEFT + plot_w,
            bottom + 18,
            end.strftime(time_format),
        )
    )
    if y_label:
        parts.append(
            format_html(
                '<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">{}</text>',
                LINE_TOP + plot_h / 2,
                LINE_TOP + plot_h / 2,
                y_label,
            )
        )
    if limit is not None:
        y = y_of(limit)
        parts.append(
            format_html(
                '<line class="threshold" x1="{}" x2="{}" y1="{}" y2="{}"></line>'
                '<text class="threshold-label" x="{}" y="{}" dominant-baseline="middle">threshold {}</text>',
                LINE_LEFT,
                LINE_LEFT + plot_w,
                f"{y:.1f}",
                f"{y:.1f}",
                LINE_LEFT + plot_w + 6,
                f"{y:.1f}",
                _fmt(limit),
            )
        )
    for index, (label, points) in enumerate(lines):
        colour = PALETTE[index % len(PALETTE)]
        coords = " ".join(f"{x_of(when_):.1f},{y_of(value):.1f}" for when_, value in points)
        dots = format_html_join(
            "",
            '<circle cx="{}" cy="{}" r="3" fill="{}"><title>{} {}: {}</title></circle>',
            (
                (
                    f"{x_of(when_):.1f}",
                    f"{y_of(value):.1f}",
                    colour,
                    label,
                    when_.strftime("%Y-%m-%d %H:%M UTC"),
                    _fmt(value),
                )
                for when_, value in points
            ),
        )
        parts.append(
            format_html(
                '<g class="series"><polyline points="{}" fill="none" stroke="{}" stroke-width="2"></polyline>{}</g>',
                coords,
                colour,
                dots,
            )
        )
    legend = format_html_join(
        "",
        '<li><span class="swatch" style="background: {}" aria-hidden="true"></span>{}</li>',
        ((PALETTE[index % len(PALETTE)], label) for index, (label, _) in enumerate(lines)),
    )
    if limit is not None:
        legend = format_html(
            '{}<li><span class="swatch" style="background: repeating-linear-gradient(90deg, #b3261e 0 4px, '
            'transparent 4px 7px)" aria-hidden="true"></span>Threshold {}</li>',
            legend,
            _fmt(limit),
        )
    table_rows = [
        (label, when_.strftime("%Y-%m-%d %H:%M UTC"), _fmt(value)) for label, points in lines for when_, value in points
    ]
    caption = title if limit is None else f"{title} (threshold {_fmt(limit)})"
    table = _hidden_table(caption, ["Series", "Time", y_label or "Value"], table_rows)
    return format_html(
        '<figure class="chart line-chart"><figcaption>{}</figcaption>'
        '<svg viewBox="0 0 {} {}" width="{}" height="{}" aria-hidden="true" focusable="false" '
        'preserveAspectRatio="xMinYMin meet">{}</svg><ul class="legend">{}</ul>{}</figure>',
        title,
        CHART_WIDTH,
        LINE_HEIGHT,
        CHART_WIDTH,
        LINE_HEIGHT,
        mark_safe("".join(parts)),
        legend,
        table,
    )


def humanize_status(value: Any) -> str:
    """A status value as a label: the choice's label when given one, else "awaiting_promotion" -> "Awaiting promotion"."""
    label = getattr(value, "label", None)
    if label:
        return str(label)
    text = str(getattr(value, "value", value) or "").replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:]


@register.simple_tag
def status_badge(value: Any, label: str | None = None) -> SafeString:
    """<span class="badge badge-<value>">Label</span>; the value becomes a safe CSS class."""
    if value is None or value == "":
        return mark_safe(EMPTY)
    raw = str(getattr(value, "value", value))
    css = re.sub(r"[^a-z0-9_-]", "", raw.lower()) or "neutral"
    return format_html('<span class="badge badge-{}">{}</span>', css, label or humanize_status(value))


@register.filter
def status_label(value: Any) -> str:
    """Filter form of the badge label: {{ change.status|status_label }}."""
    return humanize_status(value)


@register.simple_tag(takes_context=True)
def confirm_action(
    context: template.Context,
    url: str,
    label: str,
    reason_required: bool = True,
    danger: bool = False,
    **options: Any,
) -> SafeString:
    """A POST form behind a confirmation step (<details>), with CSRF and a reason (required unless told).

    Options: field_name="reason", field_label="Reason", prompt="..." (the question shown), confirm_label="...",
    and hidden_<name>=value for extra hidden inputs (e.g. hidden_wave_index=2 posts wave_index=2).
    """
    request: HttpRequest | None = context.get("request")
    token = get_token(request) if request is not None else context.get("csrf_token", "")
    field_name = str(options.pop("field_name", "reason"))
    field_label = str(options.pop("field_label", "Reason"))
    prompt = str(options.pop("prompt", f"{label}: are you sure? This is recorded with your name."))
    confirm_label = str(options.pop("confirm_label", f"Confirm: {label}"))
    hidden = [(name[len("hidden_") :], value) for name, value in options.items() if name.startswith("hidden_")]
    uid = _uid("confirm")
    button_class = "btn btn-danger" if danger else "btn btn-primary"
    summary_class = "btn btn-danger" if danger else "btn btn-secondary"
    required = mark_safe(" required") if reason_required else ""
    requirement = "" if reason_required else " (optional)"
    return format_html(
        '<details class="confirm-action"><summary class="{}">{}</summary>'
        '<div class="confirm-panel"><form method="post" action="{}">'
        '<input type="hidden" name="csrfmiddlewaretoken" value="{}">{}'
        "<p>{}</p>"
        '<div class="form-row"><label for="{}">{}{}</label>'
        '<textarea id="{}" name="{}" rows="3"{}></textarea></div>'
        '<div class="btn-row"><button type="submit" class="{}">{}</button></div>'
        "</form></div></details>",
        summary_class,
        label,
        url,
        token,
        format_html_join("", '<input type="hidden" name="{}" value="{}">', hidden),
        prompt,
        uid,
        field_label,
        requirement,
        uid,
        field_name,
        required,
        button_class,
        confirm_label,
    )


@register.simple_tag(takes_context=True)
def main_nav(context: template.Context) -> list[Any]:
    """The navigation items for the current user ({% main_nav as items %})."""
    request = context.get("request")
    return nav_items(request) if request is not None else []


@register.simple_tag(takes_context=True)
def user_roles(context: template.Context) -> list[str]:
    """Labels of the roles the current user holds ({% user_roles as roles %})."""
    request = context.get("request")
    held = roles_of(getattr(request, "user", None))
    return [str(label) for value, label in Role.choices if value in held]


@register.filter
def duration_words(value: timedelta | None) -> str:
    """A timedelta in words: '15 minutes', '1 hour 30 minutes'."""
    return describe_duration(value)


@register.filter
def message_class(tags: str) -> str:
    """Map a django.contrib.messages level tag to an alert class."""
    for level in ("error", "warning", "success", "info"):
        if level in (tags or "").split():
            return f"alert-{level}"
    return "alert-info"
