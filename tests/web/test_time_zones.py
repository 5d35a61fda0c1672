"""The one time-zone rule: shown and typed in the viewer's zone (the browser's, from the ota_tz cookie), UTC on
hover, in the API and in storage; chart axes on the viewer's clock; sparse charts as values with their n."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from django import forms
from django.core.exceptions import ValidationError
from django.template import Context, Template
from django.utils import timezone

from approvals.models import ChangeRequest
from ota_project.web.charts import SMALL_SAMPLE, line_chart_data
from ota_project.web.datetime_input import ZonedDateTimeField, parse_shown_time
from ota_project.web.zones import ZONE_COOKIE, zone_named
from tests.support.html import find, find_all, visible_text
from tests.web.helpers import html_of, page_client

BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2026, 1, 15, 8, 0, tzinfo=UTC)


def render(source: str, **context: object) -> str:
    return Template("{% load ota_ui %}" + source).render(Context(context)).strip()


# --- zone names -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "Not/AZone", "../../etc/passwd", "Europe/Berlin\n", "a" * 80, "Europe/Berlin;x", "localtime"]
)
def test_only_names_from_the_tz_database_are_zones(name):
    assert zone_named(name) is None


def test_a_tz_database_name_is_a_zone():
    assert zone_named("America/Argentina/Buenos_Aires") == ZoneInfo("America/Argentina/Buenos_Aires")


# --- shown times ----------------------------------------------------------------------------------------------


def test_when_shows_the_viewers_clock_with_its_zone_and_utc_on_hover():
    with timezone.override(BERLIN):
        html = render("{% when dt %}", dt=datetime(2026, 7, 1, 12, 0, tzinfo=UTC))
    moment = find(html, "time")
    assert visible_text(html) == "2026-07-01 14:00 CEST"
    assert moment.get("title") == "2026-07-01 12:00 UTC"
    assert moment.get("datetime") == "2026-07-01T12:00:00Z"
    assert moment.get("data-zone") == "Europe/Berlin"


def test_line_chart_axis_and_tooltips_are_on_the_viewers_clock():
    points = [(START, 1), (START + timedelta(days=2), 2)]
    with timezone.override(BERLIN):
        chart = line_chart_data([{"label": "rate", "points": points}])
    assert chart is not None
    assert chart.start_text == "15 Jan 09:00 CET" and chart.end_text == "17 Jan 09:00 CET"
    assert chart.lines[0].points[0].title == "rate 2026-01-15 09:00 CET: 1"


# --- sparse charts --------------------------------------------------------------------------------------------


def test_a_chart_with_one_point_per_series_is_a_value_not_a_line():
    html = render(
        "{% line_chart series 'Success rate (%)' y_label='%' %}",
        series=[{"label": "Success rate (%)", "points": [(START, 87.5, 8)]}],
    )
    assert not find_all(html, "svg")
    single = find(html, "figure", **{"data-testid": "chart-single"})
    text = visible_text(single)
    assert "87.5 %" in text and "n=8, a small sample" in text and "2026-01-15 08:00 UTC" in text


def test_small_samples_are_drawn_hollow_with_their_n_and_large_ones_filled():
    series = [{"label": "rate", "points": [(START, 50, 2), (START + timedelta(hours=1), 90, SMALL_SAMPLE)]}]
    chart = line_chart_data(series)
    assert chart is not None and chart.has_small and not chart.singles
    small, large = chart.lines[0].points
    assert small.small and small.title.endswith("(n=2)")
    assert not large.small and large.title.endswith(f"(n={SMALL_SAMPLE})")
    html = render("{% line_chart series 'T' %}", series=series)
    assert len(find_all(html, "circle", class_="small-sample")) == 1
    assert "fewer than" in find(html, "p", **{"data-testid": "small-sample-note"}).text()
    assert "50 (n=2)" in find(html, "table").text()


def test_no_data_is_a_sentence():
    html = render("{% line_chart series 'Share' %}", series=[{"label": "a", "points": []}])
    assert "No measurements yet." in visible_text(html) and not find_all(html, "svg")


# --- typed times ----------------------------------------------------------------------------------------------


def test_typed_time_is_read_on_the_given_clock_and_stored_in_utc():
    assert parse_shown_time("2026-07-01 14:00", BERLIN) == datetime(2026, 7, 1, 12, 0, tzinfo=UTC)
    assert parse_shown_time("2026-01-15T09:30:15", BERLIN) == datetime(2026, 1, 15, 8, 30, 15, tzinfo=UTC)


def test_an_explicit_offset_or_utc_wins_over_the_zone():
    assert parse_shown_time("2026-07-01 14:00 UTC", BERLIN) == datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
    assert parse_shown_time("2026-07-01 14:00Z", BERLIN) == datetime(2026, 7, 1, 14, 0, tzinfo=UTC)
    assert parse_shown_time("2026-07-01 14:00-05:00", BERLIN) == datetime(2026, 7, 1, 19, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("01/07/2026 2:00 PM", "YYYY-MM-DD HH:MM"),
        ("2026-07-01", "YYYY-MM-DD HH:MM"),
        ("2026-02-30 10:00", "not a real date"),
        ("2026-07-01 24:00", "not a real date"),
        ("2026-07-01 14:00+15:00", "not an offset"),
        ("2026-03-29 02:30", "does not exist in Europe/Berlin"),
        ("2026-10-25 02:30", "happens twice in Europe/Berlin"),
        ("x" * 5000, "YYYY-MM-DD HH:MM"),
    ],
)
def test_bad_or_unclear_times_are_field_errors_that_say_what_to_type(text, words):
    with pytest.raises(ValidationError) as raised:
        parse_shown_time(text, BERLIN)
    assert words in raised.value.messages[0]


def test_the_twice_happening_hour_is_told_apart_by_its_offset():
    assert parse_shown_time("2026-10-25 02:30+02:00", BERLIN) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert parse_shown_time("2026-10-25 02:30+01:00", BERLIN) == datetime(2026, 10, 25, 1, 30, tzinfo=UTC)


class _WindowForm(forms.Form):
    start = ZonedDateTimeField(label="Start")


def test_the_field_reads_the_zone_it_was_shown_in_not_the_current_one():
    form = _WindowForm({"start": "2026-07-01 14:00", "start_zone": "Asia/Tokyo"})
    with timezone.override(BERLIN):
        assert form.is_valid(), form.errors
    assert form.cleaned_data["start"] == datetime(2026, 7, 1, 5, 0, tzinfo=UTC)


def test_the_field_refuses_an_unknown_zone_and_shows_the_zone_beside_the_input():
    form = _WindowForm({"start": "2026-07-01 14:00", "start_zone": "Mars/Olympus"})
    assert not form.is_valid() and "Unknown time zone" in form.errors["start"][0]
    with timezone.override(BERLIN):
        html = str(_WindowForm(initial={"start": datetime(2026, 7, 1, 12, 0, tzinfo=UTC)})["start"])
    field = find(html, "input", type="text")
    assert field.get("value") == "2026-07-01 14:00"
    assert "start_zone" in (field.get("aria-describedby") or "")
    assert visible_text(find(html, "span", class_="input-zone")) == "Europe/Berlin (UTC+02:00)"
    assert find(html, "input", type="hidden").get("value") == "Europe/Berlin"


# --- pages and API ----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_pages_use_the_cookie_zone_and_the_api_stays_utc(submitted_change, cab_member):
    client = page_client(cab_member)
    client.cookies[ZONE_COOKIE] = "America/New_York"
    page = html_of(client.get(f"/changes/{submitted_change.pk}/"))
    zones = {moment.get("data-zone") for moment in find_all(page, "time") if moment.get("data-utc")}
    assert zones == {"America/New_York"}
    api = client.get(f"/api/v1/changes/{submitted_change.pk}/").json()
    assert api["requested_window_start"].endswith(("Z", "+00:00"))


@pytest.mark.django_db
def test_a_bad_zone_cookie_means_utc(submitted_change, cab_member):
    client = page_client(cab_member)
    client.cookies[ZONE_COOKIE] = "../../etc/localtime"
    page = html_of(client.get(f"/changes/{submitted_change.pk}/"))
    assert {moment.get("data-zone") for moment in find_all(page, "time") if moment.get("data-utc")} == {"UTC"}


@pytest.mark.django_db
def test_window_typed_on_the_viewers_clock_is_stored_in_utc(requester, change_fields):
    from approvals import services

    change = services.change_create(actor=requester, **change_fields)
    client = page_client(requester)
    client.cookies[ZONE_COOKIE] = "Asia/Kolkata"
    form_html = html_of(client.get(f"/changes/{change.pk}/edit/"))
    start_input = find(form_html, "input", name="requested_window_start")
    local_start = change.requested_window_start.astimezone(ZoneInfo("Asia/Kolkata"))
    assert (start_input.get("value") or "").startswith(local_start.strftime("%Y-%m-%d %H:%M"))
    assert find(form_html, "input", name="requested_window_start_zone").get("value") == "Asia/Kolkata"
    refused = client.post(
        f"/changes/{change.pk}/edit/",
        {"requested_window_start": "tomorrow at 9", "requested_window_start_zone": "Asia/Kolkata"},
    )
    assert refused.status_code in (200, 400)
    assert "YYYY-MM-DD HH:MM" in visible_text(html_of(refused))
    assert ChangeRequest.objects.get(pk=change.pk).requested_window_start == change.requested_window_start


@pytest.mark.django_db
def test_scheduling_reads_the_start_on_the_operators_clock_and_confirms_it_in_both(approved_change, operator, settings):
    settings.TEMPORAL_ENABLED = False
    client = page_client(operator)
    client.cookies[ZONE_COOKIE] = "Europe/Berlin"
    start = (timezone.now() + timedelta(hours=2)).astimezone(BERLIN).replace(second=0, microsecond=0)
    response = client.post(
        f"/changes/{approved_change.pk}/schedule/",
        {"schedule-start": start.strftime("%Y-%m-%d %H:%M"), "schedule-start_zone": "Europe/Berlin"},
        follow=True,
    )
    approved_change.refresh_from_db()
    assert approved_change.scheduled_start == start.astimezone(UTC)
    message = next(text for text in map(str, response.context["messages"]) if text.startswith("Scheduled"))
    assert message == (
        f"Scheduled to start at {start:%Y-%m-%d %H:%M} {start.tzname()} ({start.astimezone(UTC):%Y-%m-%d %H:%M} UTC)."
    )
