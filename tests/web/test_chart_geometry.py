"""Chart geometry as plain data: round axes, bars in proportion, the threshold inside the plot (no templates)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ota_project.web.charts import (
    BAR_LABEL_WIDTH,
    bar_chart_data,
    format_number,
    line_chart_data,
    nice_scale,
    stacked_bars_data,
)

START = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("low", "high", "scale"),
    [(0, 7.9, (0, 8, 2)), (0, 10, (0, 10, 2.5)), (0, 95, (0, 100, 25)), (0, 0, (0, 1, 0.25)), (-3, 12, (-5, 15, 5))],
)
def test_axes_end_on_round_numbers_that_cover_the_data(low, high, scale):
    assert nice_scale(low, high) == pytest.approx(scale)


@pytest.mark.parametrize(("value", "text"), [(1500, "1,500"), (2.5, "2.5"), (1 / 3, "0.33"), (4.0, "4")])
def test_numbers_read_as_people_write_them(value, text):
    assert format_number(value) == text


def test_bars_start_at_the_label_column_and_scale_to_the_largest_value():
    chart = bar_chart_data([("a", 10), ("b", 5), ("c", 0)], "t")
    assert chart is not None
    assert [bar.width for bar in chart.bars] == [400.0, 200.0, 0.0]
    assert chart.bar_x == BAR_LABEL_WIDTH and all(bar.value_x > BAR_LABEL_WIDTH + bar.width for bar in chart.bars)
    assert [bar.y for bar in chart.bars] == sorted(bar.y for bar in chart.bars)  # top to bottom in row order
    assert bar_chart_data([], "t") is None and bar_chart_data(None) is None


def test_stacks_leave_out_empty_segments_and_keep_the_table_complete():
    chart = stacked_bars_data([("w1", {"succeeded": 3, "failed": 0})], ["succeeded", "failed"], "t")
    assert chart is not None
    assert [segment.title for segment in chart.stacks[0].segments] == ["w1 – Succeeded: 3"]
    assert chart.table.rows[0].cells == ("3", "0", "3")


def test_threshold_above_the_data_widens_the_axis_so_the_line_stays_in_the_plot():
    chart = line_chart_data(
        [{"label": "rate", "points": [(START, 1), (START + timedelta(minutes=5), 2)]}], threshold=50
    )
    assert chart is not None and chart.threshold is not None
    assert float(chart.ticks[-1].label) >= 50  # the axis reaches past the threshold
    assert chart.ticks[-1].y <= chart.threshold.y < chart.bottom
    assert all(chart.threshold.y < point.y for point in chart.lines[0].points)


def test_series_without_points_are_left_out_and_no_points_is_no_chart():
    assert line_chart_data([{"label": "a", "points": []}]) is None
    chart = line_chart_data([{"label": "a", "points": []}, {"label": "b", "points": [(START, 1)]}])
    assert chart is not None and [line.label for line in chart.lines] == ["b"]
    assert chart.legend[0].label == "b" and chart.threshold is None
