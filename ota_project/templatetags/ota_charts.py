"""Inline SVG charts rendered on the server (no chart library, nothing from a CDN).

Each tag computes its geometry with ota_project.web.charts and renders templates/includes/charts/<name>.html;
every chart carries a visually-hidden table with the same numbers for screen readers, and every label is escaped.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django import template

from ota_project.web.charts import bar_chart_data, line_chart_data, stacked_bars_data

register = template.Library()


@register.inclusion_tag("includes/charts/bar_chart.html")
def bar_chart(rows: Iterable[tuple[Any, Any]] | None, title: str = "") -> dict[str, Any]:
    """Horizontal bars for (label, value) rows, plus the same numbers as a hidden table."""
    return {"chart": bar_chart_data(rows, title), "title": title}


@register.inclusion_tag("includes/charts/stacked_bars.html")
def stacked_bars(
    rows: Iterable[tuple[Any, Mapping[str, Any]]] | None, series: Iterable[Any] | None, title: str = ""
) -> dict[str, Any]:
    """Stacked horizontal bars: one bar per row label, one segment per series, a legend and a hidden table."""
    return {"chart": stacked_bars_data(rows, series, title), "title": title}


@register.inclusion_tag("includes/charts/line_chart.html")
def line_chart(
    series: Iterable[Mapping[str, Any]] | None, title: str = "", threshold: Any = None, y_label: str = ""
) -> dict[str, Any]:
    """Lines over time for [{"label", "points": [(datetime, value)]}], an optional dashed threshold line."""
    return {"chart": line_chart_data(series, title, threshold, y_label), "title": title}
