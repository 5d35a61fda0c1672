"""The change's timers on the time-skipping test server over the real database: review reminders to the reviewers
who may still decide, escalation at the deadline, approval expiry, and the start that fires by itself (or is held
when its pre-flight refuses). Hours of waiting take a moment; every step is checked in the database."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.contrib.auth.models import Group
from django.core import mail
from django.utils import timezone

from approvals import services
from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ApprovalPolicy, ChangeRequest
from ota_project.alerts.choices import AlertKind, AlertStatus
from ota_project.alerts.models import Alert
from ota_project.roles import Role
from rollouts.models import Rollout
from tests.changes.support import TimeSkipping, time_skipping_worker
from tests.temporal_support import in_temporal_loop, wait_until

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def timers(settings: Any) -> Any:
    settings.TEMPORAL_ENABLED = False  # the test starts and signals the workflow itself (see tests/changes/support.py)
    settings.OTA_CHANGE_TIMERS_TEMPORAL_CLOCK = True  # the test server's skipped time is "now" for the activities
    with time_skipping_worker() as skipping:
        yield skipping


def _policy(change: ChangeRequest, **minutes: int) -> None:
    ApprovalPolicy.objects.filter(change_type=change.change_type, risk_level=change.risk_level).update(**minutes)


def _records(change: ChangeRequest, action: str) -> list[DecisionRecord]:
    return list(DecisionRecord.objects.filter(object_type="change", object_id=str(change.pk), action=action))


def _after(record: DecisionRecord) -> dict[str, Any]:
    assert isinstance(record.after, dict)
    return record.after


def _wait_for_record(change: ChangeRequest, action: str, count: int = 1) -> list[DecisionRecord]:
    wait_until(lambda: len(_records(change, action)) >= count, 30, f"{count} x {action}", interval=0.1)
    return _records(change, action)


def test_reviewers_are_reminded_and_the_overdue_review_escalates_to_the_cab_chair(
    timers: TimeSkipping, submitted_change: ChangeRequest, cab_member: Any, cab_member_2: Any, make_user: Any
):
    chair = make_user(Role.CAB_CHAIR, username="chloe-chair")
    _policy(submitted_change, review_deadline_minutes=180, reminder_every_minutes=60)
    timers.start(submitted_change.pk)
    state = timers.settled(submitted_change.pk, lambda s: s.status == ChangeStatus.SUBMITTED)
    assert state.next_due == "reminder" and state.review_due_at
    assert not _records(submitted_change, "change.review_reminder")  # nothing before its time

    timers.skip(timedelta(minutes=61))
    (first,) = _wait_for_record(submitted_change, "change.review_reminder")
    assert first.actor is None and first.actor_name.startswith("system:change-timer for approval policy")
    assert sorted(_after(first)["notified"]) == ["carl-cab", "cora-cab"]
    assert sorted(m.to[0] for m in mail.outbox) == ["carl-cab@example.test", "cora-cab@example.test"]

    # One reviewer decides: the next reminder goes only to the one who may still decide.
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    timers.nudge(submitted_change.pk, "approval.approved")
    mail.outbox.clear()
    timers.skip(timedelta(minutes=60))
    second = _wait_for_record(submitted_change, "change.review_reminder", 2)[-1]
    assert _after(second)["notified"] == ["cora-cab"] and [m.to for m in mail.outbox] == [["cora-cab@example.test"]]

    timers.skip(timedelta(minutes=60))
    (escalation,) = _wait_for_record(submitted_change, "change.review_escalated")
    assert _after(escalation)["escalated_to"] == Role.CAB_CHAIR and _after(escalation)["notified"] == [chair.username]
    policy = f"system:change-timer for approval policy {submitted_change.change_type}/{submitted_change.risk_level}"
    assert escalation.actor is None and escalation.actor_name == policy
    assert "chloe-chair@example.test" in [m.to[0] for m in mail.outbox]
    state = timers.settled(submitted_change.pk, lambda s: s.next_due == "")
    assert state.status == ChangeStatus.IN_REVIEW
    # Once escalated, nothing more is owed in this round: further time changes nothing.
    timers.skip(timedelta(hours=5))
    assert len(_records(submitted_change, "change.review_reminder")) == 2
    assert len(_records(submitted_change, "change.review_escalated")) == 1
    timers.save_history(submitted_change.pk, "review_reminders_and_escalation")


def test_an_overdue_emergency_escalates_to_the_emergency_cab(
    timers: TimeSkipping, requester: Any, change_fields: dict[str, Any], make_user: Any
):
    make_user(Role.CAB_CHAIR, username="chloe-chair")
    ecab = make_user(Role.EMERGENCY_CAB, username="erin-ecab")
    change = services.change_create(
        actor=requester, **{**change_fields, "change_type": "emergency", "emergency_reason": "eCall outage"}
    )
    change = services.change_submit(actor=requester, change=change)
    _policy(change, review_deadline_minutes=30, reminder_every_minutes=0)
    timers.start(change.pk)
    timers.settled(change.pk, lambda s: s.next_due == "escalation")
    timers.skip(timedelta(minutes=31))
    (escalation,) = _wait_for_record(change, "change.review_escalated")
    assert _after(escalation)["escalated_to"] == Role.EMERGENCY_CAB and _after(escalation)["notified"] == [
        ecab.username
    ]
    assert not _records(change, "change.review_reminder")  # reminders are off for this policy


def test_an_approval_lapses_after_its_validity_and_the_change_needs_a_fresh_decision(
    timers: TimeSkipping, approved_change: ChangeRequest
):
    _policy(approved_change, approval_valid_minutes=120)
    timers.start(approved_change.pk)
    state = timers.settled(approved_change.pk, lambda s: s.next_due == "approval_expiry")
    assert state.approval_expires_at
    timers.skip(timedelta(minutes=119))
    assert ChangeRequest.objects.get(pk=approved_change.pk).status == ChangeStatus.APPROVED

    timers.skip(timedelta(minutes=2))
    (lapse,) = _wait_for_record(approved_change, "change.approval_lapsed")
    change = ChangeRequest.objects.get(pk=approved_change.pk)
    assert change.status == ChangeStatus.SUBMITTED and change.revision == approved_change.revision + 1
    assert change.approval_lapsed_at is not None and "older than the policy allows" in change.approval_lapse_reason
    assert not change.approvals.filter(voided_at__isnull=True).exists()
    policy = f"system:change-timer for approval policy {approved_change.change_type}/{approved_change.risk_level}"
    assert lapse.actor is None and lapse.actor_name == policy
    (voided,) = _records(approved_change, "change.approvals_void")  # the approvals it voided, on the same behalf
    assert voided.actor is None and voided.actor_name == policy
    # A fresh review round began: its deadline is what the workflow waits for now.
    state = timers.settled(change.pk, lambda s: s.status == ChangeStatus.SUBMITTED and s.review_due_at != "")
    assert state.approval_expires_at == ""
    timers.save_history(change.pk, "approval_lapse")


def test_a_scheduled_change_starts_by_itself_as_its_operator_and_a_reschedule_moves_the_timer(
    timers: TimeSkipping, approved_change: ChangeRequest, operator: Any
):
    start = timezone.now() + timedelta(hours=2)
    change = services.change_schedule(actor=operator, change=approved_change, start=start)
    timers.start(change.pk)
    timers.settled(change.pk, lambda s: s.next_due == "scheduled_start")
    later = start + timedelta(hours=3)
    services.change_schedule(actor=operator, change=change, start=later)
    timers.nudge(change.pk, "change.reschedule")
    timers.settled(change.pk, lambda s: s.scheduled_start == later.isoformat())

    timers.skip(timedelta(hours=2, minutes=5))  # the first time passes: nothing starts
    assert not Rollout.objects.filter(change=change).exists()
    timers.skip(timedelta(hours=3))
    wait_until(lambda: Rollout.objects.filter(change=change).exists(), 30, "the rollout to start", interval=0.1)
    rollout = Rollout.objects.get(change=change)
    assert rollout.started_by == operator
    assert ChangeRequest.objects.get(pk=change.pk).status == ChangeStatus.IMPLEMENTING
    record = DecisionRecord.objects.get(
        object_type="rollout", object_id=str(rollout.pk), action="rollout.scheduled_start"
    )
    assert record.actor is None and record.actor_name == f"system:change-timer for {operator.username}"
    timers.save_history(change.pk, "scheduled_start")


def test_a_refused_pre_flight_holds_the_change_and_tells_its_operator(
    timers: TimeSkipping, approved_change: ChangeRequest, operator: Any
):
    start = timezone.now() + timedelta(hours=1)
    change = services.change_schedule(actor=operator, change=approved_change, start=start)
    timers.start(change.pk)
    timers.settled(change.pk, lambda s: s.next_due == "scheduled_start")
    # Before the start, the operator leaves the operator role: a person could not press Start now either.
    operator.groups.remove(Group.objects.get(name=Role.OPERATOR))
    mail.outbox.clear()

    timers.skip(timedelta(hours=1, minutes=1))
    (held,) = _wait_for_record(change, "change.start_held")
    change.refresh_from_db()
    assert change.status == ChangeStatus.APPROVED and change.scheduled_start is None
    assert "operator role" in change.start_held_reason and change.start_held_at is not None
    assert held.actor_name == f"system:change-timer for {operator.username}"
    assert not Rollout.objects.filter(change=change).exists()
    # The operator who scheduled it is mailed (no longer an operator, the alert's round does not reach them) ...
    mine = [m for m in mail.outbox if m.to == [operator.email]]
    assert len(mine) == 1 and "did not start" in mine[0].subject
    # ... and the operators on call get an alert naming the change, who scheduled it and the refusal.
    alert = Alert.objects.get(kind=AlertKind.CHANGE_START_HELD, dedup_key=f"change.start_held:{change.pk}")
    assert alert.status == AlertStatus.OPEN and alert.evidence["scheduled_by"] == operator.username
    assert "operator role" in alert.evidence["reason"] and f"CR-{change.pk}" in alert.title
    timers.save_history(change.pk, "start_held")


def test_history_stays_small_across_many_reminders(
    timers: TimeSkipping, submitted_change: ChangeRequest, cab_member: Any, cab_member_2: Any
):
    from tests.workflows.support import run_histories
    from workflows.change import HISTORY_EVENT_BUDGET

    _policy(submitted_change, review_deadline_minutes=200, reminder_every_minutes=1)
    handle = timers.start(submitted_change.pk)
    timers.settled(submitted_change.pk, lambda s: s.next_due == "reminder")
    timers.skip(timedelta(minutes=201))
    _wait_for_record(submitted_change, "change.review_escalated")
    assert len(_records(submitted_change, "change.review_reminder")) == 199  # one a minute, none twice
    histories = in_temporal_loop(run_histories(timers.client, handle))
    assert len(histories) >= 2  # continued as new
    assert all(len(history.events) <= HISTORY_EVENT_BUDGET + 50 for history in histories)


def test_cancelling_a_scheduled_change_ends_its_workflow_and_nothing_starts(
    timers: TimeSkipping, approved_change: ChangeRequest, operator: Any, cab_member: Any
):
    start = timezone.now() + timedelta(hours=1)
    change = services.change_schedule(actor=operator, change=approved_change, start=start)
    handle = timers.start(change.pk)
    timers.settled(change.pk, lambda s: s.next_due == "scheduled_start")
    services.change_cancel(actor=cab_member, change=change, reason="Superseded by CR-99.")
    timers.nudge(change.pk, "change.cancel")
    final = in_temporal_loop(handle.result())
    assert final.closed and final.status == ChangeStatus.CANCELLED
    timers.skip(timedelta(hours=2))
    assert not Rollout.objects.filter(change=change).exists()
