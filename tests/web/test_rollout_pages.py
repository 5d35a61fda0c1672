"""Rollout pages: list, start, live dashboard (fragment, actions, runbook, health history) — who sees and does what.

Most tests run without a workflow engine (TEMPORAL_ENABLED=False, rollout steps played through the services);
the last one drives pause, resume and promote through the page against the real Temporal dev server.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import Client
from django.utils import timezone

from approvals import services as change_services
from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.plan_warnings import change_plan_warnings
from devices.models import Device
from ota_project.net import free_port
from ota_project.roles import Role
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, RolloutStatus
from rollouts.deployment_services import deployment_offer
from rollouts.models import Deployment, HealthSample, Rollout, Wave
from tests.fleet_driver import FAIL_BOOT, HAPPY, finished, healthy, play, run_until
from tests.support.html import accessible_name, badges, find, find_all, number, row_cells, visible_text
from tests.support.rollouts import abort, assign_through, authorize, expect_offer
from tests.temporal_support import running_worker
from tests.web.helpers import html_of, messages_of, page_client
from workflows.policy import HUMAN_ACTIONS
from workflows.types import PhaseChange

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("no_temporal")]

LIST_URL = "/rollouts/"
START_URL = "/rollouts/start/"


def follow(client: Client, response):
    assert response.status_code == 302, response.status_code
    return client.get(response["Location"])


@pytest.fixture
def rollout(approved_change, operator) -> Rollout:
    """A running rollout whose pilot wave (2 devices) is assigned."""
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    return Rollout.objects.get(pk=rollout.pk)


def start_form(change: ChangeRequest) -> dict[str, Any]:
    """What an operator sends from the start page: the confirmation and every warning it shows acknowledged."""
    return {"change": change.pk, "confirm": "on", "acknowledge": [w.code for w in change_plan_warnings(change)]}


def play_wave(rollout: Rollout, wave_index: int, behaviours: list[tuple[str, ...]]) -> None:
    pending = Deployment.objects.filter(rollout=rollout, wave__index=wave_index, status="pending").order_by("pk")
    for deployment, statuses in zip(list(pending), behaviours, strict=False):
        play(expect_offer(deployment.device), statuses)


def set_state(rollout: Rollout, phase: str, gate: str = "", wave: int = 0, reason: str = "") -> Rollout:
    if wave:
        assign_through(rollout, wave)  # a projection never gets ahead of the promotions
    steps.rollout_phase(PhaseChange(rollout.pk, phase, wave, gate=gate, reason=reason))
    return Rollout.objects.get(pk=rollout.pk)


def operator_author(change: ChangeRequest):
    """The change's author, also holding the operator role (a fresh instance: roles are cached per instance)."""
    change.author.groups.add(Group.objects.get(name=Role.OPERATOR))
    return get_user_model().objects.get(pk=change.author_id)


def buttons(html: str) -> list[str]:
    """Labels of the confirmed actions offered on the page (the <summary> that opens each)."""
    section = re.search(r'<section id="rollout-actions".*?</section>', html, re.S)
    return re.findall(r'<summary class="[^"]*">([^<]+)</summary>', section.group(0)) if section else []


# --- access -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/rollouts/", "/rollouts/start/", "/rollouts/kpis/", "ROLLOUT/", "ROLLOUT/live/"])
def test_anonymous_visitors_are_sent_to_sign_in(client, rollout, path):
    url = path.replace("ROLLOUT", f"/rollouts/{rollout.pk}")
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("path", ["/rollouts/", "/rollouts/start/", "/rollouts/kpis/", "ROLLOUT/", "ROLLOUT/live/"])
def test_people_without_a_role_get_403(make_user, rollout, path):
    response = page_client(make_user()).get(path.replace("ROLLOUT", f"/rollouts/{rollout.pk}"))
    assert response.status_code == 403 and "You need the" in html_of(response)


@pytest.mark.parametrize("role", list(Role.values))
def test_every_role_reads_the_list_and_the_dashboard(make_user, rollout, role):
    client = page_client(make_user(role))
    listed = client.get(LIST_URL)
    assert listed.status_code == 200 and f"Rollout {rollout.pk}" in html_of(listed)
    dashboard = client.get(f"/rollouts/{rollout.pk}/")
    assert dashboard.status_code == 200 and html_of(dashboard).count("<h1>") == 1


def test_missing_rollout_is_404(operator):
    assert page_client(operator).get("/rollouts/999999/").status_code == 404
    assert page_client(operator).get("/rollouts/999999/live/").status_code == 404


def test_htmx_poll_after_the_session_expired_navigates_to_sign_in(client, rollout):
    response = client.get(f"/rollouts/{rollout.pk}/live/", HTTP_HX_REQUEST="true")
    assert response.status_code == 200 and response["HX-Redirect"].startswith("/login/?next=")


# --- list -------------------------------------------------------------------------------------------------------


def test_list_shows_active_rollouts_first_with_wave_and_progress(
    rollout, operator, requester, change_fields, cab_member, cab_member_2
):
    other = change_services.change_create(actor=requester, **change_fields)  # same devices, once the first ended
    other = change_services.change_submit(actor=requester, change=other)
    change_services.approval_grant(actor=cab_member, change=other, revision=1)
    other = change_services.approval_grant(actor=cab_member_2, change=other, revision=1)
    play_wave(rollout, 0, [HAPPY])
    abort(rollout, reason="test")
    # The updated unit is re-flashed in the depot, so the second change's rollback release is on every target again.
    Device.objects.filter(installed_version="1.1.0").update(installed_version="1.0.0")
    active = steps.rollout_start(actor=operator, change=other)
    set_state(active, RolloutStatus.RUNNING)
    set_state(active, RolloutStatus.AWAITING_PROMOTION, gate="promotion", wave=1)

    html = html_of(page_client(operator).get(LIST_URL))

    assert html.index(f"Rollout {active.pk}<") < html.index(f"Rollout {rollout.pk}<")
    statuses = [status for _, status in badges(html)]
    assert "awaiting_promotion" in statuses and "aborted" in statuses
    assert "2/3" in html  # the active rollout's current wave, k/n
    bars = [(accessible_name(bar), bar.get("aria-valuetext")) for bar in find_all(html, role="progressbar")]
    assert ("Devices succeeded", "1 of 20") in bars  # one device of the aborted rollout succeeded
    assert "Start a rollout" in html


def test_list_empty_state_and_no_start_link_for_readers(auditor, operator):
    assert "No rollout has started yet" in html_of(page_client(operator).get(LIST_URL))
    html = html_of(page_client(auditor).get(LIST_URL))
    assert "No rollout has started yet" in html and "Start a rollout</a>" not in html


# --- start ------------------------------------------------------------------------------------------------------


def test_start_page_shows_release_scope_and_waves(operator, approved_change):
    response = page_client(operator).get(f"{START_URL}?change={approved_change.pk}")
    html = html_of(response)
    assert response.status_code == 200
    assert "1.1.0" in html and "1.0.0" in html  # release and rollback release
    assert "<strong>20</strong> devices targeted today, 2 of them tagged pilot" in html
    assert row_cells(html, "1. pilot")[0] == "2" and row_cells(html, "3. fleet")[0] == "16"  # devices per wave
    assert [button.text() for button in find_all(html, "button", type="submit")][-1] == "Start rollout"


def test_operator_starts_a_rollout_and_lands_on_its_dashboard(operator, approved_change):
    client = page_client(operator)
    warnings = change_plan_warnings(approved_change)
    assert warnings, "the fixture's pilot needs more devices than it has: a warning to acknowledge"
    codes = [warning.code for warning in warnings]
    response = client.post(START_URL, {"change": approved_change.pk, "confirm": "on", "acknowledge": codes})
    rollout = Rollout.objects.get(change=approved_change)
    assert response.status_code == 302 and response["Location"] == f"/rollouts/{rollout.pk}/"
    page = client.get(response["Location"])
    assert f"Rollout {rollout.pk} started" in html_of(page)
    record = DecisionRecord.objects.get(action="rollout.start", actor=operator)
    assert record.after is not None
    assert [(w["code"], w["acknowledged"]) for w in record.after["warnings"]] == [(code, True) for code in codes]
    assert ChangeRequest.objects.get(pk=approved_change.pk).status == ChangeStatus.IMPLEMENTING


def test_start_page_shows_each_warning_and_refuses_a_start_that_does_not_acknowledge_them_all(
    operator, approved_change
):
    client = page_client(operator)
    warnings = change_plan_warnings(approved_change)
    page = html_of(client.get(f"{START_URL}?change={approved_change.pk}"))
    shown = [item.get("data-warning") for item in find_all(find(page, id="plan-warnings"), "li")]
    assert shown == [warning.code for warning in warnings]
    assert all(f'value="{warning.code}"' in page for warning in warnings)  # one checkbox each
    records = DecisionRecord.objects.count()
    partial = client.post(
        START_URL, {"change": approved_change.pk, "confirm": "on", "acknowledge": [warnings[0].code][:0]}
    )
    assert partial.status_code == 400 and "Acknowledge this warning to start" in html_of(partial)
    forged = client.post(START_URL, {"change": approved_change.pk, "confirm": "on", "acknowledge": ["nonsense"]})
    assert forged.status_code == 400
    assert not Rollout.objects.exists() and DecisionRecord.objects.count() == records


def test_start_needs_the_confirmation_tick(operator, approved_change):
    response = page_client(operator).post(START_URL, {"change": approved_change.pk})
    assert response.status_code == 400 and "Tick the box" in html_of(response)
    assert not Rollout.objects.exists()


@pytest.mark.parametrize("who", ["auditor", "cab_member", "requester"])
def test_non_operators_see_why_and_cannot_start(request, approved_change, who):
    user = request.getfixturevalue(who)
    client = page_client(user)
    html = html_of(client.get(f"{START_URL}?change={approved_change.pk}"))
    assert "You need the operator role to start a rollout." in html and "Start rollout</button>" not in html
    refused = client.post(START_URL, {"change": approved_change.pk, "confirm": "on"})
    assert refused.status_code == 403 and "You need the operator role to start a rollout." in html_of(refused)
    assert not Rollout.objects.exists()


def test_the_author_is_told_someone_else_must_start(approved_change):
    author = operator_author(approved_change)
    client = page_client(author)
    assert "another operator must start its rollout" in html_of(client.get(f"{START_URL}?change={approved_change.pk}"))
    refused = client.post(START_URL, {"change": approved_change.pk, "confirm": "on"})
    assert refused.status_code == 403 and "You are the author of this change" in html_of(refused)
    assert not Rollout.objects.exists()


def test_unapproved_change_is_refused_plainly(operator, submitted_change):
    client = page_client(operator)
    html = html_of(client.get(f"{START_URL}?change={submitted_change.pk}"))
    assert "only approved changes are rolled out" in html and "Start rollout</button>" not in html
    before = DecisionRecord.objects.count()
    refused = client.post(START_URL, {"change": submitted_change.pk, "confirm": "on"})
    assert refused.status_code == 409 and "The rollout was not started." in html_of(refused)
    assert not Rollout.objects.exists() and DecisionRecord.objects.count() == before


def test_conflicting_rollout_is_refused_plainly(rollout, operator, requester, change_fields, cab_member, cab_member_2):
    other = change_services.change_submit(
        actor=requester, change=change_services.change_create(actor=requester, **change_fields)
    )
    change_services.approval_grant(actor=cab_member, change=other, revision=1)
    other = change_services.approval_grant(actor=cab_member_2, change=other, revision=1)
    # Said on the start page before anyone presses Start, and no Start button is offered.
    page = html_of(page_client(operator).get(f"{START_URL}?change={other.pk}"))
    assert f"Another active rollout targets some of the same devices: rollout-{rollout.pk}" in page
    assert "Start rollout</button>" not in page
    refused = page_client(operator).post(START_URL, {"change": other.pk, "confirm": "on"})
    assert refused.status_code == 409
    assert f"Another active rollout targets some of the same devices: rollout-{rollout.pk}" in html_of(refused)
    assert Rollout.objects.count() == 1


def test_an_existing_rollout_is_linked_not_started_again(rollout, operator):
    html = html_of(page_client(operator).get(f"{START_URL}?change={rollout.change_id}"))
    assert f"open rollout {rollout.pk}" in html and "Start rollout</button>" not in html


def test_start_without_a_change_lists_the_changes_ready_to_start(operator, approved_change):
    html = html_of(page_client(operator).get(START_URL))
    assert f"?change={approved_change.pk}" in html and approved_change.title in html


def test_bad_or_unknown_change_numbers(operator):
    client = page_client(operator)
    bad = client.get(f"{START_URL}?change=abc")
    assert bad.status_code == 400 and "Enter a whole number." in html_of(bad)
    assert client.get(f"{START_URL}?change=999999").status_code == 404
    assert client.post(START_URL, {"change": "x", "confirm": "on"}).status_code == 400


@pytest.mark.django_db(transaction=True)  # the workflow starts on commit, as in production
def test_temporal_unreachable_at_start_is_shown_plainly(settings, operator, approved_change):
    settings.TEMPORAL_ENABLED = True
    settings.TEMPORAL_ADDRESS = f"127.0.0.1:{free_port()}"
    client = page_client(operator)
    response = client.post(START_URL, start_form(approved_change))
    rollout = Rollout.objects.get(change=approved_change)
    page = follow(client, response)
    text = " ".join(messages_of(page))
    assert f"Rollout {rollout.pk} is recorded, but its workflow could not be started yet" in text
    assert "the worker starts it as soon as Temporal is reachable" in text
    assert "Cannot connect to Temporal" in text
    assert "Temporal unreachable — showing the database projection." in html_of(page)


# --- dashboard --------------------------------------------------------------------------------------------------


def test_dashboard_polls_a_fragment_until_the_rollout_ends(rollout, operator):
    client = page_client(operator)
    html = html_of(client.get(f"/rollouts/{rollout.pk}/"))
    assert re.search(r'<div id="rollout-live" hx-get="/rollouts/\d+/live/\?state=[^"]+" hx-trigger="every 3s"', html)
    fragment = client.get(f"/rollouts/{rollout.pk}/live/", HTTP_HX_REQUEST="true")
    assert html_of(fragment).lstrip().startswith('<div id="rollout-live"')
    abort(rollout, reason="stop")
    ended = html_of(client.get(f"/rollouts/{rollout.pk}/live/", HTTP_HX_REQUEST="true"))
    assert '<div id="rollout-live"' in ended and "hx-trigger" not in ended


def test_fragment_brings_new_buttons_only_when_the_state_changed(rollout, operator):
    client = page_client(operator)
    state = f"{rollout.status}:{rollout.gate}:{rollout.current_wave}"
    same = html_of(client.get(f"/rollouts/{rollout.pk}/live/", {"state": state}))
    assert 'id="rollout-actions"' not in same and 'id="messages"' not in same  # a banner stays while true
    set_state(rollout, RolloutStatus.PAUSED, reason="paused by olga")
    changed = html_of(client.get(f"/rollouts/{rollout.pk}/live/", {"state": state}))
    # The banner about the action (written before the workflow acted) gives way to the state it led to.
    (banner,) = find_all(find(changed, id="messages"), role="status")
    assert find(changed, id="messages").get("hx-swap-oob") == "true"
    assert banner.text() == "Now: Paused. paused by olga" and "alert-warning" in banner.classes
    assert (
        '<section id="rollout-actions" class="card" aria-labelledby="rollout-actions-heading" hx-swap-oob="true">'
        in (changed)
    )
    assert buttons(changed) == ["Resume", "Abort", "Roll back"]


def test_a_banner_about_an_action_gives_way_to_the_live_state_at_the_first_refresh(rollout, operator):
    """Even when the page after the action was rendered in the state the action led to: the banner is replaced."""
    client = page_client(operator)
    page = follow(client, client.post(f"/rollouts/{rollout.pk}/actions/pause/", {"reason": ""}))
    assert any(text.startswith("Pause was not sent.") for text in messages_of(page))
    live_url = find(html_of(page), id="rollout-live").get("hx-get") or ""
    assert live_url.endswith("?state=banner")
    refreshed = html_of(client.get(live_url))
    (banner,) = find_all(find(refreshed, id="messages"), role="status")
    assert banner.text().startswith("Now: ")
    # Without a banner, the page polls with its own state and a refresh in that state brings no banner.
    quiet = find(html_of(client.get(f"/rollouts/{rollout.pk}/")), id="rollout-live").get("hx-get") or ""
    assert not quiet.endswith("?state=banner")
    assert 'id="messages"' not in html_of(client.get(quiet))


def test_dashboard_counts_down_the_current_waves_soak_and_stops_when_it_is_over(rollout, operator):
    client = page_client(operator)
    wave = rollout.waves.get(index=0)
    soak = rollout.approved_plan.waves[0].soak_seconds
    Wave.objects.filter(pk=wave.pk).update(started_at=timezone.now() - timedelta(seconds=soak - 125))
    countdown = find(html_of(client.get(f"/rollouts/{rollout.pk}/")), id="soak-countdown")
    assert visible_text(countdown).startswith("2 minutes ")
    assert "left, until" in visible_text(countdown)
    Wave.objects.filter(pk=wave.pk).update(started_at=timezone.now() - timedelta(seconds=soak + 1))
    assert find_all(html_of(client.get(f"/rollouts/{rollout.pk}/")), id="soak-countdown") == []


def test_running_rollout_offers_pause_abort_and_rollback_to_operators(rollout, operator):
    html = html_of(page_client(operator).get(f"/rollouts/{rollout.pk}/"))
    assert buttons(html) == ["Pause", "Abort", "Roll back"]
    assert 'name="csrfmiddlewaretoken"' in html and "required></textarea>" in html


def test_auditor_reads_the_dashboard_without_buttons(rollout, auditor):
    html = html_of(page_client(auditor).get(f"/rollouts/{rollout.pk}/"))
    assert buttons(html) == [] and "You need the operator role to act on a rollout" in html
    assert "Waves" in html and "Timeline of events and decisions" in html


def test_author_is_told_why_there_are_no_buttons(rollout):
    html = html_of(page_client(operator_author(rollout.change)).get(f"/rollouts/{rollout.pk}/"))
    assert buttons(html) == [] and "You are the author of this change" in html


def test_gate_buttons_and_runbook_follow_the_state(rollout, operator):
    client = page_client(operator)
    awaiting = set_state(rollout, RolloutStatus.AWAITING_PROMOTION, gate="promotion", reason="Wave pilot passed.")
    html = html_of(client.get(f"/rollouts/{awaiting.pk}/"))
    assert buttons(html) == ["Pause", "Promote", "Abort", "Roll back"]
    assert '<input type="hidden" name="wave_index" value="0">' in html
    assert "<strong>Awaiting promotion</strong>" in html and "a person promotes it" in html

    held = set_state(rollout, RolloutStatus.AWAITING_PROMOTION, gate="inconclusive", reason="Too few finished.")
    html = html_of(client.get(f"/rollouts/{held.pk}/"))
    assert "<strong>Held: inconclusive</strong>" in html and "Check the 0 timed-out devices" in html
    assert buttons(html) == ["Pause", "Promote", "Abort", "Roll back"]

    paused = set_state(rollout, RolloutStatus.PAUSED, reason="freeze")
    html = html_of(client.get(f"/rollouts/{paused.pk}/"))
    assert buttons(html) == ["Resume", "Abort", "Roll back"] and "<strong>Paused</strong>" in html
    assert "Resume when the reason for the pause is gone" in html


def test_halted_rollout_explains_the_failure_and_offers_abort_or_rollback(rollout, operator):
    play_wave(rollout, 0, [HAPPY, FAIL_BOOT])
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="Wave pilot failed: 1 of 2 finished devices failed.")
    html = html_of(page_client(operator).get(f"/rollouts/{rollout.pk}/"))
    assert buttons(html) == ["Abort", "Roll back"]
    assert "<strong>Halted</strong>" in html and "Wave pilot failed: 1 of 2 finished devices failed." in html
    assert "Most failures: 1 × rolled back on tcu-4g-r2 (failure class boot)." in html
    assert "Roll back if devices that took 1.1.0 must return to 1.0.0" in html
    figures_match = re.search(r'data-testid="health-figures".*?</table>', html, re.S)
    assert figures_match is not None
    figures = figures_match.group(0)
    assert "50 % (1/2)" in figures and "5 %" in figures  # failure rate next to the pilot's 5 % threshold
    assert "Over the threshold: the wave halts" in figures


def test_dashboard_shows_device_counts_and_the_health_history_chart(rollout, operator):
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    play_wave(rollout, 0, [HAPPY])
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    html = html_of(page_client(operator).get(f"/rollouts/{rollout.pk}/"))
    assert row_cells(html, "Succeeded") == ["1"] and row_cells(html, "Pending") == ["1"]
    assert ("Succeeded", "succeeded") in badges(html) and ("Pending", "pending") in badges(html)
    assert HealthSample.objects.filter(rollout=rollout).count() == 2
    charts = {visible_text(find(figure, "figcaption")): figure for figure in find_all(html, "figure", class_="chart")}
    failure_chart = charts["Failure rate of wave pilot over time (%)"]
    # The first sample had no finished device (no rate yet); the second one measured 0 %, below the 5 % limit:
    # one measurement is a value next to its threshold, not a line.
    assert not find_all(failure_chart, "svg") and failure_chart.get("data-testid") == "chart-single"
    assert "0 %" in visible_text(find(failure_chart, "strong", class_="single-value"))
    thresholds = [visible_text(label) for label in find_all(html, class_="threshold-label")]
    assert "Threshold 5." in thresholds and "threshold 95" in thresholds  # failure (one value) and success (a line)
    play_wave(rollout, 0, [HAPPY])
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    html = html_of(page_client(operator).get(f"/rollouts/{rollout.pk}/"))
    charts = {visible_text(find(figure, "figcaption")): figure for figure in find_all(html, "figure", class_="chart")}
    failure_chart = charts["Failure rate of wave pilot over time (%)"]
    points = find_all(failure_chart, "circle")  # two measurements: now a line
    assert len(points) == 2 and accessible_name(points[-1]).endswith(": 0")
    assert number(find(failure_chart, "line", class_="threshold"), "y1") < number(points[-1], "cy")  # drawn above


def test_timeline_lists_decisions_newest_first(rollout, operator):
    authorize(rollout, "pause", operator, reason="night freeze")
    html = html_of(page_client(operator).get(f"/rollouts/{rollout.pk}/"))
    timeline_match = re.search(r'id="timeline-heading".*?</table>', html, re.S)
    assert timeline_match is not None
    timeline = timeline_match.group(0)
    actions = re.findall(r"<code>([a-z_.]+)</code>", timeline)
    assert actions[0] == "rollout.pause" and "rollout.start" in actions and "change.submit" in actions
    assert actions.index("rollout.start") < actions.index("change.submit")
    assert "night freeze" in timeline


def test_dashboard_says_when_temporal_is_off_or_unreachable(settings, rollout, operator):
    client = page_client(operator)
    assert "Temporal is not enabled in this deployment" in html_of(client.get(f"/rollouts/{rollout.pk}/"))
    settings.TEMPORAL_ENABLED = True
    settings.TEMPORAL_ADDRESS = f"127.0.0.1:{free_port()}"
    response = client.get(f"/rollouts/{rollout.pk}/")
    assert response.status_code == 200
    assert "Temporal unreachable — showing the database projection." in html_of(response)
    fragment = client.get(f"/rollouts/{rollout.pk}/live/", HTTP_HX_REQUEST="true")
    assert fragment.status_code == 200 and "Temporal unreachable" in html_of(fragment)


# --- actions ----------------------------------------------------------------------------------------------------


def _recorded() -> int:
    return DecisionRecord.objects.filter(action__in=[f"rollout.{a}" for a in HUMAN_ACTIONS]).count()


def test_action_without_a_reason_is_refused_and_nothing_happens(rollout, operator):
    client = page_client(operator)
    response = client.post(f"/rollouts/{rollout.pk}/actions/pause/", {"reason": "  "})
    page = follow(client, response)
    assert "Pause was not sent. Give a reason" in " ".join(messages_of(page))
    assert _recorded() == 0 and Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_promote_must_name_the_wave(rollout, operator):
    set_state(rollout, RolloutStatus.AWAITING_PROMOTION, gate="promotion")
    client = page_client(operator)
    page = follow(client, client.post(f"/rollouts/{rollout.pk}/actions/promote/", {"reason": "ok"}))
    assert "Promote names the wave that waits for promotion." in " ".join(messages_of(page))
    assert _recorded() == 0


@pytest.mark.parametrize("who", ["auditor", "cab_member", "requester"])
def test_only_operators_may_post_actions(request, rollout, who):
    response = page_client(request.getfixturevalue(who)).post(
        f"/rollouts/{rollout.pk}/actions/abort/", {"reason": "mine"}
    )
    assert response.status_code == 403 and "You need the Operator role" in html_of(response)
    assert _recorded() == 0 and Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_author_action_is_refused_by_the_service(rollout):
    author = operator_author(rollout.change)
    client = page_client(author)
    page = follow(client, client.post(f"/rollouts/{rollout.pk}/actions/abort/", {"reason": "mine"}))
    assert "Abort refused: You are the author of this change" in " ".join(messages_of(page))
    assert _recorded() == 0 and Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_action_on_a_finished_rollout_is_refused(rollout, operator):
    abort(rollout, reason="done")
    before = _recorded()
    client = page_client(operator)
    page = follow(client, client.post(f"/rollouts/{rollout.pk}/actions/pause/", {"reason": "late"}))
    assert "Pause refused: The rollout is already aborted; nothing more can be done." in " ".join(messages_of(page))
    assert _recorded() == before


def test_unreachable_temporal_refuses_the_action_plainly(settings, rollout, operator):
    settings.TEMPORAL_ADDRESS = f"127.0.0.1:{free_port()}"
    client = page_client(operator)
    page = follow(client, client.post(f"/rollouts/{rollout.pk}/actions/pause/", {"reason": "freeze"}))
    assert "Pause refused: Cannot connect to Temporal" in " ".join(messages_of(page))
    assert _recorded() == 0 and Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING


def test_unknown_action_and_get_are_refused(rollout, operator):
    client = page_client(operator)
    assert client.post(f"/rollouts/{rollout.pk}/actions/explode/", {"reason": "x"}).status_code == 404
    assert client.get(f"/rollouts/{rollout.pk}/actions/pause/").status_code == 405
    assert _recorded() == 0 and Rollout.objects.get(pk=rollout.pk).status == rollout.status


# --- against the real Temporal dev server ------------------------------------------------------------------------


def fast_plan() -> dict:
    wave = {"soak_seconds": 1, "min_sample": 1, "success_threshold": 0.9, "failure_threshold": 0.1}
    return {
        "waves": [
            {"name": "pilot", "cohort": {"kind": "pilot"}, "promotion": "manual", **wave},
            {"name": "fleet", "cohort": {"kind": "percent", "value": 100}, "promotion": "auto", **wave},
        ],
        "abort_policy": "halt_and_rollback",
        "monitor_interval_seconds": 1,
        "deadlines": {"download_seconds": 60, "install_seconds": 60, "confirm_seconds": 60},
    }


@pytest.mark.django_db(transaction=True)
def test_pause_resume_and_promote_through_the_page_reach_the_workflow(
    temporal_settings, requester, change_fields, cab_member, cab_member_2, operator
):
    change = change_services.change_create(actor=requester, **{**change_fields, "rollout_plan": fast_plan()})
    change = change_services.change_submit(actor=requester, change=change)
    change_services.approval_grant(actor=cab_member, change=change, revision=1)
    change = change_services.approval_grant(actor=cab_member_2, change=change, revision=1)
    client = page_client(operator)
    with running_worker():
        started = client.post(START_URL, start_form(change))
        rollout = Rollout.objects.get(change=change)
        assert started["Location"] == f"/rollouts/{rollout.pk}/"
        run_until(rollout.pk, healthy, lambda r: r.status == RolloutStatus.AWAITING_PROMOTION)
        live = html_of(client.get(f"/rollouts/{rollout.pk}/"))
        assert "Live answer: Awaiting promotion, wave 1 of 2" in live

        reason = f"shift change {uuid.uuid4().hex[:6]}"
        page = follow(client, client.post(f"/rollouts/{rollout.pk}/actions/pause/", {"reason": reason}))
        said = " ".join(messages_of(page))
        assert "Pause accepted by the workflow: no new wave starts" in said and "awaiting promotion" not in said
        run_until(rollout.pk, lambda d: None, lambda r: r.status == RolloutStatus.PAUSED, timeout=20)
        assert DecisionRecord.objects.get(action="rollout.pause").reason == reason
        paused = html_of(client.get(f"/rollouts/{rollout.pk}/"))
        assert buttons(paused) == ["Resume", "Abort", "Roll back"]

        page = follow(client, client.post(f"/rollouts/{rollout.pk}/actions/resume/", {"reason": "freeze over"}))
        assert "Resume accepted by the workflow" in " ".join(messages_of(page))
        run_until(rollout.pk, lambda d: None, lambda r: r.status == RolloutStatus.AWAITING_PROMOTION, timeout=20)

        wrong = follow(
            client, client.post(f"/rollouts/{rollout.pk}/actions/promote/", {"reason": "go", "wave_index": 1})
        )
        assert (
            "Promote refused: Wave 1 (wave_index 0) is waiting for promotion, not wave 2 (wave_index 1)."
            in " ".join(messages_of(wrong))
        )
        page = follow(
            client, client.post(f"/rollouts/{rollout.pk}/actions/promote/", {"reason": "pilot ok", "wave_index": 0})
        )
        assert "Promote accepted by the workflow: wave 1 is promoted" in " ".join(messages_of(page))
        rollout = run_until(rollout.pk, healthy, finished, timeout=60)
    assert rollout.status == RolloutStatus.COMPLETED
    assert Deployment.objects.filter(rollout=rollout, kind=DeploymentKind.UPDATE, status="succeeded").count() == 20
    done = html_of(client.get(f"/rollouts/{rollout.pk}/"))
    assert "hx-trigger" not in done and "nothing more can be done" in done


def test_dashboard_shows_the_tripped_breaker_and_why_devices_were_set_aside(rollout, operator):
    plan = rollout.plan
    plan["waves"][0]["min_sample"] = 1  # the pilot is judged after its first device
    Rollout.objects.filter(pk=rollout.pk).update(plan=plan)
    play_wave(rollout, 0, [FAIL_BOOT])
    other = Deployment.objects.filter(rollout=rollout, status="pending").select_related("device").first()
    assert other is not None
    assert deployment_offer(device_id=other.device_id) is None  # withdrawn by the breaker, no workflow involved
    html = html_of(page_client(operator).get(f"/rollouts/{rollout.pk}/"))
    breaker_match = re.search(r'id="breaker-0">(.*?)</p>', html, re.S)
    assert breaker_match is not None
    breaker = breaker_match.group(1)
    assert "Breaker tripped" in breaker and "crossed its failure threshold" in breaker
    set_aside_match = re.search(r'id="set-aside-heading".*?</section>', html, re.S)
    assert set_aside_match is not None
    set_aside = set_aside_match.group(0)
    assert "withdrawn: the rollout&#x27;s failure threshold was crossed" in set_aside
