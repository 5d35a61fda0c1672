"""Chart geometry as plain data: scales, coordinates, tick values, colours and the numbers people read.

Pure functions over the rows a view passes to the chart tags; each returns a frozen dataclass that one template in
templates/includes/charts/ turns into inline SVG, a legend and a visually-hidden table with the same numbers.
Nothing here builds markup, so escaping is the template engine's job. Coordinates are SVG user units rounded to a
tenth (the SVG scales to its container); the templates print them with localisation off.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ota_project.web.zones import as_utc, in_viewer_zone, shown_time

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
THRESHOLD_SWATCH = "repeating-linear-gradient(90deg, #b3261e 0 4px, transparent 4px 7px)"

# Chart geometry (SVG user units).
CHART_WIDTH = 640
BAR_LABEL_WIDTH = 170
BAR_VALUE_WIDTH = 70
BAR_HEIGHT = 20
BAR_GAP = 10
LABEL_MAX_CHARS = 26
LINE_HEIGHT = 240
LINE_LEFT = 56
LINE_RIGHT = 110
LINE_TOP = 16
LINE_BOTTOM = 36
# Below this many counted items a plotted value is marked as a small sample (a hollow dot) and shows its n.
SMALL_SAMPLE = 10


@dataclass(frozen=True)
class TableRow:
    """One row of a chart's data table: the row header and its cells."""

    header: str
    cells: tuple[str, ...]


@dataclass(frozen=True)
class DataTable:
    """The numbers behind a chart, for screen readers (rendered visually hidden)."""

    caption: str
    headers: tuple[str, ...]
    rows: tuple[TableRow, ...]


@dataclass(frozen=True)
class LegendEntry:
    """A legend item: a swatch (a CSS background) and its label."""

    label: str
    background: str


@dataclass(frozen=True)
class Bar:
    """One horizontal bar with its (shortened) label on the left and its value on the right."""

    label: str
    short_label: str
    value_text: str
    y: float
    middle_y: float
    width: float
    value_x: float
    colour: str


@dataclass(frozen=True)
class BarChart:
    """Horizontal bars for (label, value) rows."""

    title: str
    width: int
    height: int
    label_x: int
    bar_x: int
    bar_height: int
    bars: tuple[Bar, ...]
    table: DataTable


@dataclass(frozen=True)
class Segment:
    """One series' part of a stacked bar; `title` is its tooltip ("Wave 1 – Failed: 2")."""

    x: float
    width: float
    colour: str
    title: str


@dataclass(frozen=True)
class Stack:
    """One stacked bar: its label, its segments left to right and its total."""

    label: str
    short_label: str
    y: float
    middle_y: float
    segments: tuple[Segment, ...]
    total_text: str
    total_x: float


@dataclass(frozen=True)
class StackedBars:
    """Stacked horizontal bars: one per row, one segment per series with a value above zero."""

    title: str
    width: int
    height: int
    label_x: int
    bar_height: int
    stacks: tuple[Stack, ...]
    legend: tuple[LegendEntry, ...]
    table: DataTable


@dataclass(frozen=True)
class Tick:
    """A horizontal grid line of a line chart at `y`, labelled with its value."""

    y: float
    label: str


@dataclass(frozen=True)
class Point:
    """A measurement drawn as a dot; `title` is its tooltip ("rate 2025-05-01 09:20 CET: 4 (n=3)"); `small` marks
    a value from fewer than SMALL_SAMPLE items (drawn hollow)."""

    x: float
    y: float
    title: str
    small: bool = False


@dataclass(frozen=True)
class SingleValue:
    """A series with one measurement only: shown as a value with its time (and n), not as a line."""

    label: str
    value: str
    at: datetime
    n: int | None


@dataclass(frozen=True)
class Line:
    """One series of a line chart: a polyline through its points, in its colour."""

    label: str
    colour: str
    points: tuple[Point, ...]

    @property
    def polyline(self) -> str:
        """The SVG `points` attribute: "x,y x,y ..."."""
        return " ".join(f"{point.x},{point.y}" for point in self.points)


@dataclass(frozen=True)
class Threshold:
    """The dashed limit line across the plot, at `y`, labelled on the right."""

    y: float
    label_x: float
    text: str


@dataclass(frozen=True)
class LineChart:
    """Lines over time with a round-numbered value axis, the first and last time, and an optional threshold."""

    title: str
    width: int
    height: int
    left: int
    right: int
    bottom: int
    time_y: int
    start_text: str
    end_text: str
    ticks: tuple[Tick, ...]
    tick_label_x: int
    y_label: str
    y_label_y: float
    threshold: Threshold | None
    lines: tuple[Line, ...]
    legend: tuple[LegendEntry, ...]
    table: DataTable
    singles: tuple[SingleValue, ...] = ()
    has_small: bool = False
    small_sample: int = SMALL_SAMPLE


def format_number(value: float) -> str:
    """Numbers as people read them: integers without decimals, others with at most two."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}".rstrip("0").rstrip(".")


def short_label(label: str, limit: int = LABEL_MAX_CHARS) -> str:
    """Shorten a label for the SVG (the full label stays in the tooltip and the data table)."""
    return label if len(label) <= limit else label[: limit - 1] + "…"


def as_number(value: Any) -> float:
    """A chart value as a float (None and non-numbers count as 0)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def humanize_status(value: Any) -> str:
    """A status value as a label: the choice's label when given one, else "awaiting_promotion" -> "Awaiting promotion"."""
    label = getattr(value, "label", None)
    if label:
        return str(label)
    text = str(getattr(value, "value", value) or "").replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:]


def series_colour(key: str, index: int) -> str:
    """A status keeps its colour (failed is red wherever it appears); other series take the palette in order."""
    return STATUS_COLOURS.get(key, PALETTE[index % len(PALETTE)])


def nice_scale(low: float, high: float, ticks: int = 4) -> tuple[float, float, float]:
    """Axis bounds and step on round numbers (1, 2, 2.5 or 5 times a power of ten) covering low..high."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return math.floor(low / step) * step, math.ceil(high / step) * step, step


def _table(caption: str, headers: Sequence[str], rows: Iterable[Sequence[str]]) -> DataTable:
    return DataTable(caption, tuple(headers), tuple(TableRow(row[0], tuple(row[1:])) for row in rows))


def _bar_top(index: int) -> int:
    return BAR_GAP + index * (BAR_HEIGHT + BAR_GAP)


def _bars_height(count: int) -> int:
    return count * (BAR_HEIGHT + BAR_GAP) + BAR_GAP


def bar_chart_data(rows: Iterable[tuple[Any, Any]] | None, title: str = "") -> BarChart | None:
    """Bars scaled to the largest value (None when there is nothing to draw)."""
    data = [(str(label), as_number(value)) for label, value in (rows or [])]
    if not data:
        return None
    peak = max(value for _, value in data) or 1.0
    plot = CHART_WIDTH - BAR_LABEL_WIDTH - BAR_VALUE_WIDTH
    bars = []
    for index, (label, value) in enumerate(data):
        y = _bar_top(index)
        width = round(max(0.0, plot * value / peak), 1)
        bars.append(
            Bar(
                label=label,
                short_label=short_label(label),
                value_text=format_number(value),
                y=y,
                middle_y=y + BAR_HEIGHT / 2,
                width=width,
                value_x=round(BAR_LABEL_WIDTH + width + 6, 1),
                colour=PALETTE[0],
            )
        )
    return BarChart(
        title=title,
        width=CHART_WIDTH,
        height=_bars_height(len(data)),
        label_x=BAR_LABEL_WIDTH - 8,
        bar_x=BAR_LABEL_WIDTH,
        bar_height=BAR_HEIGHT,
        bars=tuple(bars),
        table=_table(title, ["Label", "Value"], [(bar.label, bar.value_text) for bar in bars]),
    )


def series_list(series: Iterable[Any] | None) -> list[tuple[str, str]]:
    """Series as (key, label): plain names label themselves ("timed_out" -> "Timed out")."""
    result = []
    for item in series or []:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            result.append((str(item[0]), str(item[1])))
        else:
            result.append((str(item), humanize_status(item)))
    return result


def stacked_bars_data(
    rows: Iterable[tuple[Any, Mapping[str, Any] | None]] | None, series: Iterable[Any] | None, title: str = ""
) -> StackedBars | None:
    """Stacks scaled to the largest total; zero segments are left out (None when there is nothing to draw)."""
    keys = series_list(series)
    data = [(str(label), {key: as_number((values or {}).get(key)) for key, _ in keys}) for label, values in rows or []]
    if not data or not keys:
        return None
    totals = [sum(values.values()) for _, values in data]
    peak = max(totals) or 1.0
    plot = CHART_WIDTH - BAR_LABEL_WIDTH - BAR_VALUE_WIDTH
    stacks = []
    for index, ((label, values), total) in enumerate(zip(data, totals, strict=True)):
        y = _bar_top(index)
        x = float(BAR_LABEL_WIDTH)
        segments = []
        for series_index, (key, series_label) in enumerate(keys):
            value = values[key]
            if value <= 0:
                continue
            width = plot * value / peak
            title_text = f"{label} – {series_label}: {format_number(value)}"
            segments.append(Segment(round(x, 1), round(width, 1), series_colour(key, series_index), title_text))
            x += width
        stacks.append(
            Stack(
                label=label,
                short_label=short_label(label),
                y=y,
                middle_y=y + BAR_HEIGHT / 2,
                segments=tuple(segments),
                total_text=format_number(total),
                total_x=round(x + 6, 1),
            )
        )
    table = _table(
        title,
        ["Label", *[series_label for _, series_label in keys], "Total"],
        [
            (label, *[format_number(values[key]) for key, _ in keys], format_number(total))
            for (label, values), total in zip(data, totals, strict=True)
        ],
    )
    return StackedBars(
        title=title,
        width=CHART_WIDTH,
        height=_bars_height(len(data)),
        label_x=BAR_LABEL_WIDTH - 8,
        bar_height=BAR_HEIGHT,
        stacks=tuple(stacks),
        legend=tuple(
            LegendEntry(series_label, series_colour(key, index)) for index, (key, series_label) in enumerate(keys)
        ),
        table=table,
    )


Measured = tuple[datetime, float, int | None]


def _measured_series(series: Iterable[Mapping[str, Any]] | None) -> list[tuple[str, list[Measured]]]:
    """The series that have points, each with its points in time order (points without a time are dropped).

    A point is (time, value) or (time, value, n): n is how many items the value was computed from."""
    lines = []
    for item in series or []:
        points: list[Measured] = []
        for point in item.get("points") or []:
            moment, value, *rest = point
            if moment is None:
                continue
            n = rest[0] if rest and rest[0] is not None else None
            points.append((as_utc(moment), as_number(value), None if n is None else int(as_number(n))))
        if points:
            lines.append((str(item.get("label", "")), sorted(points, key=lambda point: point[0])))
    return lines


def _with_n(text: str, n: int | None) -> str:
    return text if n is None else f"{text} (n={n})"


def line_chart_data(
    series: Iterable[Mapping[str, Any]] | None, title: str = "", threshold: Any = None, y_label: str = ""
) -> LineChart | None:
    """Lines over time for [{"label", "points": [(datetime, value[, n])]}] on a round value axis that also covers
    the threshold, so the limit line is always inside the plot (None when no series has a point).

    Times are on the viewer's clock (ota_project.web.zones). A chart whose every series has one point is a set of
    values (`singles`), not lines; a value computed from fewer than SMALL_SAMPLE items is drawn hollow with its n."""
    measured = _measured_series(series)
    if not measured:
        return None
    limit = None if threshold is None or threshold == "" else as_number(threshold)
    all_points = [point for _, points in measured for point in points]
    start = min(moment for moment, _, _ in all_points)
    end = max(moment for moment, _, _ in all_points)
    span = (end - start).total_seconds() or 1.0
    values = [value for _, value, _ in all_points] + ([limit] if limit is not None else [])
    low, high, step = nice_scale(min(0.0, min(values)), max(values))
    plot_w = CHART_WIDTH - LINE_LEFT - LINE_RIGHT
    plot_h = LINE_HEIGHT - LINE_TOP - LINE_BOTTOM

    def x_of(moment: datetime) -> float:
        return round(LINE_LEFT + plot_w * (moment - start).total_seconds() / span, 1)

    def y_of(value: float) -> float:
        return round(LINE_TOP + plot_h * (1 - (value - low) / (high - low)), 1)

    def small(n: int | None) -> bool:
        return n is not None and n < SMALL_SAMPLE

    ticks = tuple(
        Tick(y_of(low + step * tick), format_number(round(low + step * tick, 2)))
        for tick in range(int(round((high - low) / step)) + 1)
    )
    # Short spans (a soak of minutes) need seconds to tell the ends apart; long ones need the day.
    time_format = "%H:%M:%S" if span < 3600 else "%d %b %H:%M"
    lines = tuple(
        Line(
            label=label,
            colour=PALETTE[index % len(PALETTE)],
            points=tuple(
                Point(
                    x_of(moment),
                    y_of(value),
                    _with_n(f"{label} {shown_time(moment)}: {format_number(value)}", n),
                    small(n),
                )
                for moment, value, n in points
            ),
        )
        for index, (label, points) in enumerate(measured)
    )
    legend = tuple(LegendEntry(line.label, line.colour) for line in lines)
    limit_line = None
    caption = title
    if limit is not None:
        limit_line = Threshold(y_of(limit), LINE_LEFT + plot_w + 6, f"threshold {format_number(limit)}")
        legend += (LegendEntry(f"Threshold {format_number(limit)}", THRESHOLD_SWATCH),)
        caption = f"{title} (threshold {format_number(limit)})"
    table = _table(
        caption,
        ["Series", "Time", y_label or "Value"],
        [
            (label, shown_time(moment), _with_n(format_number(value), n))
            for label, points in measured
            for moment, value, n in points
        ],
    )
    singles: tuple[SingleValue, ...] = ()
    if all(len(points) == 1 for _, points in measured):
        singles = tuple(
            SingleValue(label, format_number(value) + (f" {y_label}" if y_label else ""), moment, n)
            for label, points in measured
            for moment, value, n in points
        )
    local_start, local_end = in_viewer_zone(start), in_viewer_zone(end)
    return LineChart(
        title=title,
        width=CHART_WIDTH,
        height=LINE_HEIGHT,
        left=LINE_LEFT,
        right=LINE_LEFT + plot_w,
        bottom=LINE_TOP + plot_h,
        time_y=LINE_TOP + plot_h + 18,
        start_text=shown_time(local_start, time_format),
        end_text=shown_time(local_end, time_format),
        ticks=ticks,
        tick_label_x=LINE_LEFT - 6,
        y_label=y_label,
        y_label_y=LINE_TOP + plot_h / 2,
        threshold=limit_line,
        lines=lines,
        legend=legend,
        table=table,
        singles=singles,
        has_small=any(small(n) for _, _, n in all_points),
    )
