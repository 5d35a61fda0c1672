"""The shared template tags render the numbers they are given, escape labels and show empty states."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.template import Context, Template
from django.test import RequestFactory

from ota_project.templatetags import ota_ui

EVIL = '<script>alert("x")</script>'


def render(source: str, **context) -> str:
    return Template("{% load ota_ui %}" + source).render(Context(context))


# --- when -----------------------------------------------------------------------------------------------------


def test_when_renders_utc_time_element_for_local_rewriting():
    html = render("{% when dt %}", dt=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC))
    assert html == (
        '<time datetime="2025-03-04T05:06:07Z" title="2025-03-04 05:06 UTC" data-utc="1">2025-03-04 05:06 UTC</time>'
    )


def test_when_converts_other_zones_to_utc():
    paris = datetime(2025, 7, 1, 12, 0, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    html = render("{% when dt %}", dt=paris)
    assert 'datetime="2025-07-01T12:00:00Z"' in html and "12:00 UTC" in html


def test_when_renders_dash_for_none_and_plain_dates():
    assert render("{% when dt %}", dt=None) == "—"
    assert render("{% when dt %}", dt=date(2025, 1, 2)) == '<time datetime="2025-01-02">2025-01-02</time>'


# --- progress -------------------------------------------------------------------------------------------------


def test_progress_is_an_accessible_progressbar_with_text():
    html = render('{% progress 3 12 "Wave 1" %}')
    assert 'role="progressbar"' in html
    assert 'aria-label="Wave 1"' in html
    assert 'aria-valuenow="3"' in html and 'aria-valuemax="12"' in html and 'aria-valuemin="0"' in html
    assert "width: 25.0%" in html and ">3/12<" in html


def test_progress_with_zero_total_is_empty_not_an_error():
    html = render('{% progress 0 0 "Wave 2" %}')
    assert "width: 0.0%" in html and ">0/0<" in html


def test_progress_escapes_its_label():
    html = render("{% progress 1 2 label %}", label=EVIL)
    assert "<script>" not in html and "&lt;script&gt;" in html


# --- bar chart ------------------------------------------------------------------------------------------------


def test_bar_chart_contains_labels_values_and_a_data_table():
    html = render('{% bar_chart rows "Devices per model" %}', rows=[("tcu-4g-r2", 150), ("tcu-5g-r1", 75)])
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert ">tcu-4g-r2</text>" in svg and ">150</text>" in svg and ">75</text>" in svg
    widths = [float(w) for w in re.findall(r'<rect [^>]*width="([\d.]+)"', svg)]
    assert widths[0] == pytest.approx(2 * widths[1])
    assert "<figcaption>Devices per model</figcaption>" in html
    assert '<th scope="row">tcu-4g-r2</th><td>150</td>' in html


def test_bar_chart_empty_input_renders_empty_state():
    html = render('{% bar_chart rows "Devices per model" %}', rows=[])
    assert "empty-state" in html and "<svg" not in html and "Devices per model" in html
    assert "empty-state" in render('{% bar_chart None "Nothing" %}')


def test_bar_chart_escapes_labels_and_title():
    html = render("{% bar_chart rows title %}", rows=[(EVIL, 1)], title=EVIL)
    assert "<script>" not in html and "&lt;script&gt;" in html


def test_bar_chart_shortens_long_labels_but_keeps_them_whole_in_title_and_table():
    label = "a-very-long-hardware-model-name-rev-2"
    html = render('{% bar_chart rows "t" %}', rows=[(label, 4)])
    assert f"<title>{label}: 4</title>" in html and f'<th scope="row">{label}</th>' in html
    assert ">a-very-long-hardware-mode…</text>" in html


# --- stacked bars ---------------------------------------------------------------------------------------------


def test_stacked_bars_have_segments_totals_legend_and_table():
    rows = [("Wave 1", {"succeeded": 8, "failed": 2}), ("Wave 2", {"succeeded": 5, "pending": 15})]
    html = render(
        '{% stacked_bars rows series "Devices per state" %}', rows=rows, series=["succeeded", "failed", "pending"]
    )
    assert "<title>Wave 1 – Succeeded: 8</title>" in html
    assert "<title>Wave 1 – Failed: 2</title>" in html
    assert "<title>Wave 2 – Pending: 15</title>" in html
    assert ">10</text>" in html and ">20</text>" in html  # totals
    assert html.count('<li><span class="swatch"') == 3 and ">Failed</li>" in html
    assert '<th scope="row">Wave 2</th><td>5</td><td>0</td><td>15</td><td>20</td>' in html
    # Status series keep their meaning in colour: succeeded green, failed red.
    assert 'fill="#2e7d32"><title>Wave 1 – Succeeded' in html
    assert 'fill="#c62828"><title>Wave 1 – Failed' in html


def test_stacked_bars_accept_series_with_labels():
    html = render('{% stacked_bars rows series "t" %}', rows=[("A", {"x": 1})], series=[("x", "Ex")])
    assert "<title>A – Ex: 1</title>" in html


def test_stacked_bars_empty_input_renders_empty_state():
    assert "empty-state" in render('{% stacked_bars rows series "t" %}', rows=[], series=["a"])
    assert "empty-state" in render('{% stacked_bars rows series "t" %}', rows=[("A", {"a": 1})], series=[])


def test_stacked_bars_escape_labels():
    html = render("{% stacked_bars rows series title %}", rows=[(EVIL, {EVIL: 1})], series=[EVIL], title=EVIL)
    assert "<script>" not in html


# --- line chart -----------------------------------------------------------------------------------------------


def _points(values):
    start = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    return [(start + timedelta(minutes=10 * i), value) for i, value in enumerate(values)]


def test_line_chart_plots_points_threshold_and_table():
    series = [{"label": "Failure rate %", "points": _points([0.5, 1.5, 4.0])}]
    html = render('{% line_chart series "Wave 1 health" threshold=5 y_label="%" %}', series=series)
    svg = html.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert svg.count("<circle") == 3
    assert "<title>Failure rate % 2025-05-01 08:20 UTC: 4</title>" in svg
    assert 'class="threshold"' in svg and ">threshold 5</text>" in svg
    assert "08:00:00 UTC" in svg and "08:20:00 UTC" in svg
    assert "<caption>Wave 1 health (threshold 5)</caption>" in html
    assert '<th scope="row">Failure rate %</th><td>2025-05-01 08:10 UTC</td><td>1.5</td>' in html
    assert ">Threshold 5</li>" in html


def test_line_chart_threshold_line_lies_above_lower_values():
    series = [{"label": "rate", "points": _points([1.0, 2.0])}]
    html = render("{% line_chart series 't' threshold=10 %}", series=series)
    threshold_y = float(re.search(r'class="threshold" [^>]*y1="([\d.]+)"', html).group(1))
    point_ys = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', html)]
    assert all(threshold_y < y for y in point_ys)  # SVG y grows downwards


def test_line_chart_without_points_renders_empty_state():
    assert "empty-state" in render("{% line_chart series 'Health' %}", series=[])
    assert "empty-state" in render("{% line_chart series 'Health' %}", series=[{"label": "a", "points": []}])


def test_line_chart_escapes_labels():
    series = [{"label": EVIL, "points": _points([1])}]
    html = render("{% line_chart series title y_label=title %}", series=series, title=EVIL)
    assert "<script>" not in html and "&lt;script&gt;" in html


# --- status badge ---------------------------------------------------------------------------------------------


def test_status_badge_classes_and_labels():
    assert render("{% status_badge 'awaiting_promotion' %}") == (
        '<span class="badge badge-awaiting_promotion">Awaiting promotion</span>'
    )
    assert (
        render("{% status_badge 'failed' label='Failed (3)' %}") == '<span class="badge badge-failed">Failed (3)</span>'
    )
    assert render("{% status_badge None %}") == "—"


def test_status_badge_uses_choice_labels_and_sanitises_classes():
    from ota_project.roles import Role

    assert render("{% status_badge role %}", role=Role.SECURITY_OFFICER) == (
        '<span class="badge badge-security_officer">Security officer</span>'
    )
    html = render("{% status_badge value %}", value='x" onmouseover="alert(1)')
    assert "onmouseover=" not in html.split(">", 1)[0]


# --- confirm action -------------------------------------------------------------------------------------------


def _request_context(**extra):
    request = RequestFactory().get("/rollouts/1/")
    return {"request": request, **extra}


def test_confirm_action_is_a_post_form_with_csrf_and_required_reason():
    html = render("{% confirm_action url 'Pause' %}", **_request_context(url="/rollouts/1/pause/"))
    assert html.startswith('<details class="confirm-action"><summary class="btn btn-secondary">Pause</summary>')
    assert '<form method="post" action="/rollouts/1/pause/">' in html
    assert re.search(r'name="csrfmiddlewaretoken" value="[A-Za-z0-9]{32,}"', html)
    label_for = re.search(r'<label for="([^"]+)">Reason</label>', html).group(1)
    assert f'<textarea id="{label_for}" name="reason" rows="3" required></textarea>' in html
    assert '<button type="submit" class="btn btn-primary">Confirm: Pause</button>' in html


def test_confirm_action_danger_optional_reason_and_hidden_fields():
    html = render(
        "{% confirm_action url 'Abort' reason_required=False danger=True hidden_wave_index=2 field_name='comment' %}",
        **_request_context(url="/rollouts/1/abort/"),
    )
    assert '<summary class="btn btn-danger">Abort</summary>' in html
    assert " required" not in html and "(optional)" in html
    assert '<input type="hidden" name="wave_index" value="2">' in html
    assert 'name="comment"' in html
    assert '<button type="submit" class="btn btn-danger">' in html


def test_confirm_action_ids_are_unique_per_use():
    html = render("{% confirm_action 'a/' 'A' %}{% confirm_action 'b/' 'B' %}", **_request_context())
    ids = re.findall(r'<textarea id="([^"]+)"', html)
    assert len(ids) == 2 and ids[0] != ids[1]


def test_confirm_action_escapes_label_and_url():
    html = render("{% confirm_action url label %}", **_request_context(url='/x/" onclick="y', label=EVIL))
    assert "<script>" not in html and 'onclick="y"' not in html


# --- small helpers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "css"),
    [("error", "alert-error"), ("success", "alert-success"), ("warning", "alert-warning"), ("debug", "alert-info")],
)
def test_message_levels_map_to_alert_classes(tags, css):
    assert ota_ui.message_class(tags) == css


@pytest.mark.parametrize(
    ("duration", "words"),
    [
        (timedelta(minutes=15), "15 minutes"),
        (timedelta(hours=1, minutes=30), "1 hour 30 minutes"),
        (timedelta(seconds=45), "45 seconds"),
        (timedelta(hours=2), "2 hours"),
        (timedelta(0), "a moment"),
    ],
)
def test_duration_words(duration, words):
    assert render("{{ d|duration_words }}", d=duration) == words


def test_line_chart_axis_uses_round_ticks():
    series = [{"label": "rate", "points": _points([0.0, 3.3, 7.9])}]
    html = render("{% line_chart series 't' threshold=10 %}", series=series)
    ticks = re.findall(r'text-anchor="end" dominant-baseline="middle">([\d.,]+)</text>', html)
    assert ticks == ["0", "2.5", "5", "7.5", "10"]
    assert "08:00:00 UTC" in html and "08:20:00 UTC" in html  # a short span shows seconds
    start = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    days = [{"label": "rate", "points": [(start, 1), (start + timedelta(days=2), 2)]}]
    html = render("{% line_chart series 't' %}", series=days)
    assert "01 May 08:00 UTC" in html and "03 May 08:00 UTC" in html  # a long one shows the day
