"""The shared template tags show the numbers they are given, name them for screen readers, escape labels and show
empty states. Assertions read the rendered HTML as a person meets it (tests/support/html.py), not markup strings."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django.template import Context, Template
from django.test import RequestFactory

from ota_project.templatetags import ota_widgets
from tests.support.html import accessible_name, find, find_all, number, table_rows, visible_text

EVIL = '<script>alert("x")</script>'


def render(source: str, **context) -> str:
    return Template("{% load ota_ui %}" + source).render(Context(context))


def svg_texts(html: str) -> list[str]:
    """The words drawn inside a chart, in drawing order."""
    return [text.text() for text in find_all(find(html, "svg"), "text")]


def assert_script_shown_as_text(html: str) -> None:
    """A label holding markup is shown as those characters, never run as a script."""
    assert find_all(html, "script") == []
    assert EVIL in visible_text(html) or any(EVIL in accessible_name(el) for el in find_all(html, "title"))


# --- when -----------------------------------------------------------------------------------------------------


def test_when_shows_the_utc_time_and_marks_it_for_the_viewers_zone():
    html = render("{% when dt %}", dt=datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC))
    time = find(html, "time")
    assert visible_text(html) == "2025-03-04 05:06 UTC"
    assert time.get("datetime") == "2025-03-04T05:06:07Z"  # app.js reads this to show the viewer's local time
    assert time.get("data-utc") == "1"
    assert time.get("title") == "2025-03-04 05:06 UTC"  # the UTC time stays on hover once rewritten


def test_when_converts_other_zones_to_utc():
    paris = datetime(2025, 7, 1, 12, 0, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    html = render("{% when dt %}", dt=paris)
    assert find(html, "time").get("datetime") == "2025-07-01T12:00:00Z"
    assert visible_text(html) == "2025-07-01 12:00 UTC"


def test_when_renders_dash_for_none_and_plain_dates_without_zone_rewriting():
    assert render("{% when dt %}", dt=None) == "—"
    html = render("{% when dt %}", dt=date(2025, 1, 2))
    time = find(html, "time")
    assert visible_text(html) == "2025-01-02" and time.get("datetime") == "2025-01-02"
    assert time.get("data-utc") is None  # a day has no time zone to convert


def test_when_shows_any_other_value_as_escaped_text():
    html = render("{% when value %}", value=EVIL)
    assert find_all(html, "script") == [] and find_all(html, "time") == []
    assert visible_text(html) == EVIL


def test_when_is_inline_so_sentences_around_it_read_naturally():
    html = render("from {% when a %} to {% when b %}.", a=date(2025, 1, 2), b=date(2025, 1, 3))
    assert visible_text(html) == "from 2025-01-02 to 2025-01-03."


# --- progress -------------------------------------------------------------------------------------------------


def test_progress_is_an_accessible_progressbar_with_text():
    html = render('{% progress 3 12 "Wave 1" %}')
    bar = find(html, role="progressbar")
    assert accessible_name(bar) == "Wave 1"
    assert (bar.get("aria-valuemin"), bar.get("aria-valuenow"), bar.get("aria-valuemax")) == ("0", "3", "12")
    assert bar.get("aria-valuetext") == "3 of 12"
    assert find(html, class_="progress-fill").get("style") == "width: 25.0%"
    assert visible_text(html) == "3/12"


def test_progress_with_zero_total_is_empty_not_an_error():
    html = render('{% progress 0 0 "Wave 2" %}')
    assert find(html, class_="progress-fill").get("style") == "width: 0.0%"
    assert visible_text(html) == "0/0"


def test_progress_over_the_total_fills_the_bar_once():
    html = render('{% progress 15 12 "Wave 3" %}')
    assert find(html, role="progressbar").get("aria-valuenow") == "12"
    assert find(html, class_="progress-fill").get("style") == "width: 100.0%"
    assert visible_text(html) == "15/12"


def test_progress_escapes_its_label():
    html = render("{% progress 1 2 label %}", label=EVIL)
    assert find_all(html, "script") == []
    assert accessible_name(find(html, role="progressbar")) == EVIL


# --- bar chart ------------------------------------------------------------------------------------------------


def test_bar_chart_draws_one_bar_per_row_with_its_label_and_value():
    html = render('{% bar_chart rows "Devices per model" %}', rows=[("tcu-4g-r2", 150), ("tcu-5g-r1", 75)])
    bars = find_all(html, "g", class_="bar")
    assert [accessible_name(bar) for bar in bars] == ["tcu-4g-r2: 150", "tcu-5g-r1: 75"]
    assert svg_texts(html) == ["tcu-4g-r2", "150", "tcu-5g-r1", "75"]
    widths = [number(find(bar, "rect"), "width") for bar in bars]
    assert widths[0] == pytest.approx(2 * widths[1])  # lengths in proportion to the values
    assert find(html, "figcaption").text() == "Devices per model"


def test_bar_chart_gives_screen_readers_the_numbers_as_a_table():
    html = render('{% bar_chart rows "Devices per model" %}', rows=[("tcu-4g-r2", 150), ("tcu-5g-r1", 75)])
    assert find(html, "svg").get("aria-hidden") == "true"  # the drawing is skipped, the table read instead
    table = find(html, "table", class_="visually-hidden")
    assert find(table, "caption").text() == "Devices per model"
    assert table_rows(table, "thead") == [["Label", "Value"]]
    assert table_rows(table) == [["tcu-4g-r2", "150"], ["tcu-5g-r1", "75"]]
    assert "150" not in visible_text(find(html, "table"))  # hidden from sight, not from screen readers


def test_bar_chart_values_read_as_people_write_numbers():
    html = render('{% bar_chart rows "t" %}', rows=[("a", 12500), ("b", 2.5), ("c", 1 / 3), ("d", None)])
    assert table_rows(find(html, "table")) == [["a", "12,500"], ["b", "2.5"], ["c", "0.33"], ["d", "0"]]
    assert number(find_all(html, "rect")[3], "width") == 0


def test_bar_chart_empty_input_renders_empty_state():
    html = render('{% bar_chart rows "Devices per model" %}', rows=[])
    assert find_all(html, "svg") == []
    assert find_all(html, class_="empty-state")
    assert visible_text(html) == "Devices per model No data yet."
    assert visible_text(render('{% bar_chart None "Nothing" %}')) == "Nothing No data yet."


def test_bar_chart_shows_a_label_holding_markup_as_text():
    html = render("{% bar_chart rows title %}", rows=[(EVIL, 1)], title=EVIL)
    assert_script_shown_as_text(html)
    assert find(html, "figcaption").text() == EVIL
    assert svg_texts(html)[0] == EVIL[:25] + "…"
    assert table_rows(find(html, "table"))[0][0] == EVIL


def test_bar_chart_shortens_long_labels_but_keeps_them_whole_in_tooltip_and_table():
    label = "a-very-long-hardware-model-name-rev-2"
    html = render('{% bar_chart rows "t" %}', rows=[(label, 4)])
    assert accessible_name(find(html, "g", class_="bar")) == f"{label}: 4"
    assert table_rows(find(html, "table")) == [[label, "4"]]
    assert svg_texts(html)[0] == "a-very-long-hardware-mode…"


# --- stacked bars ---------------------------------------------------------------------------------------------


def _stacked():
    rows = [("Wave 1", {"succeeded": 8, "failed": 2}), ("Wave 2", {"succeeded": 5, "pending": 15})]
    return render(
        '{% stacked_bars rows series "Devices per state" %}', rows=rows, series=["succeeded", "failed", "pending"]
    )


def test_stacked_bars_draw_a_segment_per_nonzero_state_and_the_totals():
    html = _stacked()
    stacks = find_all(html, "g", class_="stack")
    assert [[accessible_name(rect) for rect in find_all(stack, "rect")] for stack in stacks] == [
        ["Wave 1 – Succeeded: 8", "Wave 1 – Failed: 2"],
        ["Wave 2 – Succeeded: 5", "Wave 2 – Pending: 15"],
    ]
    assert svg_texts(html) == ["Wave 1", "10", "Wave 2", "20"]  # label and total per bar
    wave_1, wave_2 = ([number(rect, "width") for rect in find_all(stack, "rect")] for stack in stacks)
    assert sum(wave_1) == pytest.approx(sum(wave_2) / 2)  # totals 10 and 20
    assert wave_1[0] == pytest.approx(4 * wave_1[1])  # 8 succeeded, 2 failed


def test_stacked_bars_segments_follow_each_other_without_gaps():
    stack = find_all(_stacked(), "g", class_="stack")[1]
    first, second = find_all(stack, "rect")
    assert number(second, "x") == pytest.approx(number(first, "x") + number(first, "width"), abs=0.1)


def test_stacked_bars_legend_names_every_series_and_the_table_has_every_number():
    html = _stacked()
    assert [item.text() for item in find_all(find(html, "ul", class_="legend"), "li")] == [
        "Succeeded",
        "Failed",
        "Pending",
    ]
    table = find(html, "table")
    assert table_rows(table, "thead") == [["Label", "Succeeded", "Failed", "Pending", "Total"]]
    assert table_rows(table) == [["Wave 1", "8", "2", "0", "10"], ["Wave 2", "5", "0", "15", "20"]]


def test_stacked_bars_keep_status_colours_in_segments_and_legend():
    html = _stacked()
    colours = {accessible_name(rect): rect.get("fill") for rect in find_all(html, "rect")}
    assert colours["Wave 1 – Succeeded: 8"] == "#2e7d32"  # green
    assert colours["Wave 1 – Failed: 2"] == "#c62828"  # red
    swatches = {item.text(): find(item, class_="swatch").get("style") for item in find_all(html, "li")}
    assert swatches["Failed"] == "background: #c62828"


def test_stacked_bars_accept_series_with_labels():
    html = render('{% stacked_bars rows series "t" %}', rows=[("A", {"x": 1})], series=[("x", "Ex")])
    assert accessible_name(find(html, "rect")) == "A – Ex: 1"
    assert find(html, "li").text() == "Ex"


def test_stacked_bars_empty_input_renders_empty_state():
    for rows, series in (([], ["a"]), ([("A", {"a": 1})], [])):
        html = render('{% stacked_bars rows series "t" %}', rows=rows, series=series)
        assert find_all(html, "svg") == [] and visible_text(html) == "t No data yet."


def test_stacked_bars_show_labels_holding_markup_as_text():
    html = render("{% stacked_bars rows series title %}", rows=[(EVIL, {EVIL: 1})], series=[EVIL], title=EVIL)
    assert_script_shown_as_text(html)
    assert find(html, "figcaption").text() == EVIL
    assert find(html, "li").text() == EVIL


# --- line chart -----------------------------------------------------------------------------------------------


def _points(values):
    start = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    return [(start + timedelta(minutes=10 * i), value) for i, value in enumerate(values)]


def _dot_ys(html: str) -> list[float]:
    return [number(dot, "cy") for dot in find_all(html, "circle")]


def test_line_chart_plots_one_dot_per_measurement_in_time_order():
    series = [{"label": "Failure rate %", "points": list(reversed(_points([0.5, 1.5, 4.0])))}]
    html = render('{% line_chart series "Wave 1 health" threshold=5 y_label="%" %}', series=series)
    dots = find_all(html, "circle")
    assert [accessible_name(dot) for dot in dots] == [
        "Failure rate % 2025-05-01 08:00 UTC: 0.5",
        "Failure rate % 2025-05-01 08:10 UTC: 1.5",
        "Failure rate % 2025-05-01 08:20 UTC: 4",
    ]
    xs = [number(dot, "cx") for dot in dots]
    assert xs == sorted(xs) and len(set(xs)) == 3  # left to right in time
    ys = _dot_ys(html)
    assert ys[0] > ys[1] > ys[2]  # rising values climb (SVG y grows downwards)
    polyline = find(html, "polyline").get("points")
    assert polyline == " ".join(f"{dot.get('cx')},{dot.get('cy')}" for dot in dots)


def test_line_chart_threshold_line_lies_above_lower_values_and_below_higher_ones():
    series = [{"label": "rate", "points": _points([1.0, 2.0, 12.0])}]
    html = render("{% line_chart series 't' threshold=10 %}", series=series)
    line = find(html, "line", class_="threshold")
    threshold_y = number(line, "y1")
    assert number(line, "y2") == threshold_y  # horizontal
    low_1, low_2, high = _dot_ys(html)
    assert high < threshold_y < low_1 and threshold_y < low_2  # SVG y grows downwards
    assert find(html, "text", class_="threshold-label").text() == "threshold 10"


def test_line_chart_threshold_above_every_value_still_fits_the_plot():
    series = [{"label": "rate", "points": _points([1.0, 2.0])}]
    html = render("{% line_chart series 't' threshold=50 %}", series=series)
    axis_bottom = number(find(html, "line", class_="axis"), "y1")
    threshold_y = number(find(html, "line", class_="threshold"), "y1")
    top_tick = min(number(line, "y1") for line in find_all(html, "line", class_="grid-line"))
    assert top_tick <= threshold_y < axis_bottom


def test_line_chart_names_threshold_in_legend_caption_and_table():
    series = [{"label": "Failure rate %", "points": _points([0.5, 1.5, 4.0])}]
    html = render('{% line_chart series "Wave 1 health" threshold=5 y_label="%" %}', series=series)
    assert find(html, "figcaption").text() == "Wave 1 health"
    assert [item.text() for item in find_all(html, "li")] == ["Failure rate %", "Threshold 5"]
    table = find(html, "table")
    assert find(table, "caption").text() == "Wave 1 health (threshold 5)"
    assert table_rows(table, "thead") == [["Series", "Time", "%"]]
    assert table_rows(table)[1] == ["Failure rate %", "2025-05-01 08:10 UTC", "1.5"]
    assert "%" in svg_texts(html)  # the axis is labelled with the unit


def test_line_chart_draws_each_series_in_its_own_colour():
    series = [{"label": "tcu-4g", "points": _points([1, 2])}, {"label": "tcu-5g", "points": _points([3])}]
    html = render("{% line_chart series 't' %}", series=series)
    groups = find_all(html, "g", class_="series")
    assert [len(find_all(group, "circle")) for group in groups] == [2, 1]
    assert len({find(group, "polyline").get("stroke") for group in groups}) == 2
    assert [item.text() for item in find_all(html, "li")] == ["tcu-4g", "tcu-5g"]


def test_line_chart_axis_uses_round_ticks_and_time_precision_fits_the_span():
    series = [{"label": "rate", "points": _points([0.0, 3.3, 7.9])}]
    html = render("{% line_chart series 't' threshold=10 %}", series=series)
    tick_labels = [text.text() for text in find_all(html, "text", text_anchor="end", dominant_baseline="middle")]
    assert tick_labels == ["0", "2.5", "5", "7.5", "10"]
    texts = svg_texts(html)
    assert "08:00:00 UTC" in texts and "08:20:00 UTC" in texts  # a short span shows seconds
    start = datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    days = [{"label": "rate", "points": [(start, 1), (start + timedelta(days=2), 2)]}]
    texts = svg_texts(render("{% line_chart series 't' %}", series=days))
    assert "01 May 08:00 UTC" in texts and "03 May 08:00 UTC" in texts  # a long one shows the day


def test_line_chart_without_points_renders_empty_state():
    for series in ([], [{"label": "a", "points": []}]):
        html = render("{% line_chart series 'Health' %}", series=series)
        assert find_all(html, "svg") == [] and visible_text(html) == "Health No measurements yet."


def test_line_chart_shows_labels_holding_markup_as_text():
    series = [{"label": EVIL, "points": _points([1, 2])}]
    html = render("{% line_chart series title y_label=title %}", series=series, title=EVIL)
    assert_script_shown_as_text(html)
    assert EVIL in svg_texts(html)  # the axis label
    assert find(html, "li").text() == EVIL
    assert accessible_name(find_all(html, "circle")[0]).startswith(EVIL)


# --- status badge ---------------------------------------------------------------------------------------------


def test_status_badge_shows_the_label_and_a_class_named_after_the_status():
    badge = find(render("{% status_badge 'awaiting_promotion' %}"), "span")
    assert badge.text() == "Awaiting promotion" and badge.classes == ["badge", "badge-awaiting_promotion"]
    badge = find(render("{% status_badge 'failed' label='Failed (3)' %}"), "span")
    assert badge.text() == "Failed (3)" and "badge-failed" in badge.classes
    assert render("{% status_badge None %}") == "—"


def test_status_badge_uses_choice_labels_and_sanitises_classes():
    from ota_project.roles import Role

    badge = find(render("{% status_badge role %}", role=Role.SECURITY_OFFICER), "span")
    assert badge.text() == "Security officer" and "badge-security_officer" in badge.classes
    html = render("{% status_badge value %}", value='x" onmouseover="alert(1)')
    badge = find(html, "span")
    assert badge.get("onmouseover") is None and set(badge.attrs) == {"class"}
    assert badge.classes == ["badge", "badge-xonmouseoveralert1"]


def test_status_badge_sits_inline_in_a_sentence():
    html = render("<p>Now {% status_badge 'paused' %} since noon</p>")
    assert visible_text(html) == "Now Paused since noon"


# --- confirm action -------------------------------------------------------------------------------------------


def _request_context(**extra):
    request = RequestFactory().get("/rollouts/1/")
    return {"request": request, **extra}


def test_confirm_action_is_a_post_form_with_csrf_and_required_reason():
    html = render("{% confirm_action url 'Pause' %}", **_request_context(url="/rollouts/1/pause/"))
    summary = find(find(html, "details", class_="confirm-action"), "summary")
    assert summary.text() == "Pause" and summary.classes == ["btn", "btn-secondary"]
    form = find(html, "form")
    assert (form.get("method"), form.get("action")) == ("post", "/rollouts/1/pause/")
    token = find(form, "input", name="csrfmiddlewaretoken").get("value") or ""
    assert len(token) >= 32 and token.isalnum()
    label = find(form, "label")
    label_for = label.get("for")
    assert label_for is not None
    reason = find(form, "textarea", id=label_for)  # the label names the field
    assert label.text() == "Reason" and reason.get("name") == "reason" and "required" in reason.attrs
    assert find(form, "p").text() == "Pause: are you sure? This is recorded with your name."
    button = find(form, "button", type="submit")
    assert button.text() == "Confirm: Pause" and "btn-primary" in button.classes


def test_confirm_action_danger_optional_reason_and_hidden_fields():
    html = render(
        "{% confirm_action url 'Abort' reason_required=False danger=True hidden_wave_index=2 field_name='comment' %}",
        **_request_context(url="/rollouts/1/abort/"),
    )
    assert "btn-danger" in find(html, "summary").classes
    assert find(html, "label").text() == "Reason (optional)"
    field = find(html, "textarea")
    assert field.get("name") == "comment" and "required" not in field.attrs
    assert find(html, "input", name="wave_index").get("value") == "2"
    assert find(html, "input", name="wave_index").get("type") == "hidden"
    assert "btn-danger" in find(html, "button").classes


def test_confirm_action_ids_are_unique_per_use():
    html = render("{% confirm_action 'a/' 'A' %}{% confirm_action 'b/' 'B' %}", **_request_context())
    ids = [field.get("id") for field in find_all(html, "textarea")]
    assert [label.get("for") for label in find_all(html, "label")] == ids
    assert len(set(ids)) == 2


def test_confirm_action_shows_label_as_text_and_keeps_the_url_one_attribute():
    html = render("{% confirm_action url label %}", **_request_context(url='/x/" onclick="y', label=EVIL))
    assert find_all(html, "script") == []
    assert find(html, "summary").text() == EVIL
    form = find(html, "form")
    assert form.get("action") == '/x/" onclick="y' and form.get("onclick") is None


# --- small helpers --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tags", "css"),
    [("error", "alert-error"), ("success", "alert-success"), ("warning", "alert-warning"), ("debug", "alert-info")],
)
def test_message_levels_map_to_alert_classes(tags, css):
    assert ota_widgets.message_class(tags) == css


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


def test_smaller_libraries_load_on_their_own():
    html = Template("{% load ota_charts ota_time %}{% bar_chart rows 'T' %}{% when d %}").render(
        Context({"rows": [("a", 1)], "d": date(2025, 1, 2)})
    )
    assert len(find_all(html, "g", class_="bar")) == 1 and find(html, "time").text() == "2025-01-02"
