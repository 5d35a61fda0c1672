"""The "needs you now" home per role: what each person sees, and that it moves on with the state."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals import services as change_services
from approvals.audit.security import security_event
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from ota_project.roles import Role
from ota_project.web.zones import ZONE_COOKIE
from rollouts import rollout_services as steps
from rollouts.choices import RolloutStatus
from rollouts.models import Rollout
from rollouts.web.home_selectors import needs_you_now
from tests.support.html import find, find_all, visible_text
from tests.support.rollouts import abort
from tests.web.helpers import html_of, page_client
from workflows.types import Gate, PhaseChange

pytestmark = pytest.mark.django_db


def _section(response, name: str):
    return find(html_of(response), "section", **{"data-testid": f"home-{name}"})


def _sections(response) -> set[str]:
    return {
        str(section.get("data-testid"))
        for section in find_all(html_of(response), "section")
        if section.get("data-testid")
    }


def test_cab_member_sees_the_change_waiting_for_their_decision_with_its_deadline(submitted_change, cab_member):
    response = page_client(cab_member).get("/")
    assert response.status_code == 200
    section = visible_text(_section(response, "cab"))
    assert f"CR-{submitted_change.pk}" in section
    rows = find_all(_section(response, "cab"), "tr")
    assert len(rows) == 2  # header + the one change
    assert find_all(rows[1], "time"), "the review deadline is shown as a time"


def test_a_decided_change_leaves_the_deciders_home_and_stays_on_the_others(submitted_change, cab_member, cab_member_2):
    change_services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    mine = visible_text(_section(page_client(cab_member).get("/"), "cab"))
    assert f"CR-{submitted_change.pk}" not in mine
    assert "No decision waits for you." in mine
    assert f"CR-{submitted_change.pk}" in visible_text(_section(page_client(cab_member_2).get("/"), "cab"))


def test_the_author_never_sees_their_own_change_as_a_decision_due(submitted_change):
    author = submitted_change.author
    author.groups.add(Group.objects.get_or_create(name=Role.CAB_MEMBER)[0])
    page = needs_you_now(author)
    assert page.cab is not None and page.cab.decisions == []


def test_decisions_are_ordered_by_review_deadline(requester, cab_member, change_fields):
    later = change_services.change_submit(
        actor=requester, change=change_services.change_create(actor=requester, **change_fields)
    )
    sooner = change_services.change_submit(
        actor=requester, change=change_services.change_create(actor=requester, **change_fields)
    )
    ChangeRequest.objects.filter(pk=sooner.pk).update(review_started_at=timezone.now() - timedelta(days=30))
    decisions = needs_you_now(cab_member).cab.decisions  # type: ignore[union-attr]
    assert [item.change.pk for item in decisions] == [sooner.pk, later.pk]
    assert decisions[0].overdue and not decisions[1].overdue


def test_operator_sees_a_halted_rollout_until_it_is_aborted(rolled_out, operator):
    rollout: Rollout = rolled_out["rollout"]
    section = _section(page_client(operator).get("/"), "operator")
    items = [item for item in find_all(section, "li") if item.get("data-kind")]
    assert [item.get("data-kind") for item in items] == ["halted"]
    assert f"Rollout {rollout.pk}" in visible_text(items[0])
    abort(rollout, operator)
    after = visible_text(_section(page_client(operator).get("/"), "operator"))
    assert f"Rollout {rollout.pk}:" not in after
    assert "No rollout waits for an operator." in after


def test_operator_sees_an_approved_change_whose_window_is_open(approved_change, operator):
    text = visible_text(_section(page_client(operator).get("/"), "operator"))
    assert f"CR-{approved_change.pk}" in text
    assert "window open, not started" in text


def test_operator_sees_a_held_scheduled_start_first_with_its_reason(approved_change, operator):
    from rollouts.rollout_services.scheduled import change_scheduled_start

    start = timezone.now() + timedelta(minutes=5)
    change_services.change_schedule(actor=operator, change=approved_change, start=start)
    operator.groups.remove(Group.objects.get(name=Role.OPERATOR))  # the pre-flight refuses a start as them now
    assert change_scheduled_start(change_id=approved_change.pk, now=start + timedelta(seconds=1)) == "held"
    operator.groups.add(Group.objects.get(name=Role.OPERATOR))
    rows = find_all(_section(page_client(operator).get("/"), "operator"), "li")
    held = [visible_text(row) for row in rows if f"CR-{approved_change.pk}" in visible_text(row)]
    assert len(held) == 1 and "scheduled start held: Pre-flight refused the scheduled start" in held[0]
    assert "operator role" in held[0]


def test_oversight_sees_recent_security_events_and_overdue_reviews(approved_change, auditor, security_officer):
    security_event(kind="action_forged", source="test.home", message="forged promote token")
    ChangeRequest.objects.filter(pk=approved_change.pk).update(
        status=ChangeStatus.COMPLETED, post_review_due_at=timezone.now() - timedelta(hours=2)
    )
    for person in (auditor, security_officer):
        text = visible_text(_section(page_client(person).get("/"), "oversight"))
        assert "Forged or unverifiable action: 1 refusal" in text
        assert f"CR-{approved_change.pk}" in text and "post-implementation review was due" in text


def test_oversight_empty_states_say_so(auditor):
    text = visible_text(_section(page_client(auditor).get("/"), "oversight"))
    assert "No security event in the last 24 hours." in text
    assert "No retrospective or post-implementation review is overdue." in text


def test_a_person_with_several_roles_sees_each_section(make_user):
    person = make_user(Role.CAB_MEMBER, Role.OPERATOR, Role.AUDITOR, Role.REQUESTER, username="multi")
    response = page_client(person).get("/")
    assert _sections(response) == {"home-cab", "home-operator", "home-oversight", "home-requester"}
    assert _sections(page_client(make_user(Role.OPERATOR)).get("/")) == {"home-operator"}


def test_live_fragment_refreshes_and_sends_the_signed_out_to_sign_in(submitted_change, cab_member):
    fragment = page_client(cab_member).get("/home/live/")
    assert fragment.status_code == 200
    root = find(html_of(fragment), "div", id="home-live")
    assert (root.get("hx-trigger") or "").startswith("every ")
    assert f"CR-{submitted_change.pk}" in visible_text(root)
    anonymous = page_client().get("/home/live/", HTTP_HX_REQUEST="true")
    assert anonymous.status_code == 200 and anonymous.headers["HX-Redirect"].startswith("/login/")
    assert page_client().get("/").status_code == 302


def test_home_times_are_in_the_viewers_zone_with_utc_on_hover(submitted_change, cab_member):
    client = page_client(cab_member)
    client.cookies[ZONE_COOKIE] = "Asia/Kolkata"
    cell = find_all(_section(client.get("/"), "cab"), "tr")[1]
    moment = find(cell, "time")
    assert moment.text().endswith("IST")
    assert (moment.get("title") or "").endswith("UTC")
    assert moment.get("data-zone") == "Asia/Kolkata"


@pytest.fixture
def running(approved_change, operator, no_temporal) -> Rollout:
    """The approved change started and its pilot wave opened (its soak runs)."""
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    return Rollout.objects.get(pk=rollout.pk)


def test_a_running_wave_shows_its_soak_countdown_and_a_held_gate_replaces_it(running, operator):
    page = needs_you_now(operator)
    assert page.operator is not None and page.operator.needs == []
    (soak,) = page.operator.soaks
    assert soak.rollout.pk == running.pk and soak.wave_number == 1 and soak.left > timedelta(0)
    text = visible_text(_section(page_client(operator).get("/"), "operator"))
    assert f"Rollout {running.pk}, wave 1" in text and "soak ends in" in text

    steps.rollout_phase(
        PhaseChange(running.pk, RolloutStatus.AWAITING_PROMOTION, 0, gate=Gate.INCONCLUSIVE, reason="too few devices")
    )
    page = needs_you_now(operator)
    assert page.operator is not None and page.operator.soaks == []
    assert [(need.kind, need.gate.label) for need in page.operator.needs] == [("held", "Held: inconclusive")]

    steps.rollout_phase(PhaseChange(running.pk, RolloutStatus.AWAITING_PROMOTION, 0, gate=Gate.PROMOTION))
    page = needs_you_now(operator)
    assert page.operator is not None
    assert [(need.kind, need.gate.label) for need in page.operator.needs] == [("gate", "Awaiting promotion")]
