"""The rules behind the change's timers, at the services (no Temporal): an expired approval counts for nothing even
before its timer fires, early or forged timer steps change nothing, each step is recorded once, and a refusal leaves
everything as it was."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from approvals import services
from approvals import timers as change_timers
from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import DecisionRecord, SecurityEvent
from approvals.choices import ChangeStatus
from approvals.models import ApprovalPolicy, ChangeRequest
from ota_project.errors import Conflict, InvalidInput
from rollouts import rollout_services
from rollouts.models import Rollout
from rollouts.rollout_services.scheduled import change_timers_fire
from workflows import change_activities
from workflows.change_types import ChangeRef


@pytest.fixture(autouse=True)
def _no_temporal(settings: Any) -> None:
    settings.TEMPORAL_ENABLED = False


def _age_approval(change: ChangeRequest, minutes: int) -> ChangeRequest:
    ChangeRequest.objects.filter(pk=change.pk).update(approved_at=timezone.now() - timedelta(minutes=minutes))
    change.refresh_from_db()
    return change


def _policy(change: ChangeRequest) -> ApprovalPolicy:
    return ApprovalPolicy.objects.get(change_type=change.change_type, risk_level=change.risk_level)


def _records() -> int:
    return DecisionRecord.objects.count()


def test_start_refuses_a_lapsed_approval_before_the_timer_marks_it(approved_change, operator):
    change = _age_approval(approved_change, _policy(approved_change).approval_valid_minutes + 1)
    before = _records()
    with pytest.raises(Conflict) as refused:
        rollout_services.rollout_start(actor=operator, change=change)
    assert refused.value.code == "approval_lapsed"
    change.refresh_from_db()
    assert change.status == ChangeStatus.APPROVED and not Rollout.objects.exists()
    assert _records() == before
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.START_REFUSED).exists()


def test_scheduling_refuses_a_lapsed_approval_and_a_start_after_the_approval_lapses(approved_change, operator):
    valid = _policy(approved_change).approval_valid_minutes
    before = _records()
    with pytest.raises(InvalidInput) as late:
        services.change_schedule(
            actor=operator, change=approved_change, start=timezone.now() + timedelta(minutes=valid + 5)
        )
    assert "start" in late.value.fields
    change = _age_approval(approved_change, valid + 1)
    with pytest.raises(Conflict, match="lapsed"):
        services.change_schedule(actor=operator, change=change, start=timezone.now())
    change.refresh_from_db()
    assert change.status == ChangeStatus.APPROVED and change.scheduled_start is None and _records() == before


def test_the_window_closing_lapses_the_approval(approved_change):
    end = approved_change.requested_window_end
    assert change_timers.change_timer_state(change_id=approved_change.pk, now=timezone.now()).approval_expires_at
    assert services.change_approval_lapse(change_id=approved_change.pk, now=end - timedelta(seconds=1)) is None
    lapsed = services.change_approval_lapse(change_id=approved_change.pk, now=end)
    assert lapsed is not None and lapsed.status == ChangeStatus.SUBMITTED
    assert lapsed.approval_lapse_reason == "Lapsed: the requested window closed."
    # Again (a retried activity): nothing more happens.
    count = _records()
    assert services.change_approval_lapse(change_id=approved_change.pk, now=end) is None
    assert _records() == count


def test_a_fresh_approval_clears_the_lapse_mark(approved_change, cab_member, cab_member_2):
    change = _age_approval(approved_change, _policy(approved_change).approval_valid_minutes + 1)
    lapsed = services.change_approval_lapse(change_id=change.pk, now=timezone.now())
    assert lapsed is not None and lapsed.approval_lapsed_at is not None
    services.approval_grant(actor=cab_member, change=lapsed, revision=lapsed.revision)
    again = services.approval_grant(actor=cab_member_2, change=lapsed, revision=lapsed.revision)
    assert again.status == ChangeStatus.APPROVED and again.approval_lapsed_at is None


def test_an_early_timer_step_changes_nothing(approved_change, operator):
    change = services.change_schedule(actor=operator, change=approved_change, start=timezone.now() + timedelta(hours=1))
    before = _records()
    state = change_timers_fire(change_id=change.pk, now=timezone.now())
    assert state.done == [] and state.next_due == "scheduled_start"
    change.refresh_from_db()
    assert change.status == ChangeStatus.SCHEDULED and not Rollout.objects.exists() and _records() == before


def test_a_scheduled_start_in_the_past_fires_once(approved_change, operator):
    change = services.change_schedule(actor=operator, change=approved_change, start=timezone.now())
    first = change_timers_fire(change_id=change.pk, now=timezone.now())
    assert first.done == ["scheduled start started"] and first.status == ChangeStatus.IMPLEMENTING
    count = _records()
    assert change_timers_fire(change_id=change.pk, now=timezone.now()).done == []
    assert Rollout.objects.filter(change=change).count() == 1 and _records() == count


def test_each_reminder_is_sent_and_recorded_once(
    submitted_change, cab_member, cab_member_2, django_capture_on_commit_callbacks
):
    policy = _policy(submitted_change)
    now = submitted_change.review_started_at + timedelta(minutes=policy.reminder_every_minutes + 1)
    with django_capture_on_commit_callbacks(execute=True):
        assert change_timers.change_review_timers_fire(change_id=submitted_change.pk, now=now) == ["reminder 1"]
        assert change_timers.change_review_timers_fire(change_id=submitted_change.pk, now=now) == []
    assert DecisionRecord.objects.filter(action="change.review_reminder").count() == 1
    assert len(mail.outbox) == 2  # the two CAB members the policy still needs


def test_a_timer_step_for_another_workflow_is_refused_as_forged(approved_change):
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, workflow_id=f"change-{approved_change.pk}-forged")
    before = _records()
    with pytest.raises(ApplicationError, match="is not the workflow of change"):
        env.run(change_activities._verified, ChangeRef(change_id=approved_change.pk))
    env.info = dataclasses.replace(env.info, workflow_id=f"change-{approved_change.pk}")
    assert env.run(change_activities._verified, ChangeRef(change_id=approved_change.pk)) == approved_change.pk
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.ACTION_FORGED).count() == 1
    assert _records() == before
    assert ChangeRequest.objects.get(pk=approved_change.pk).status == ChangeStatus.APPROVED


def test_a_reschedule_moves_the_start_and_records_who(approved_change, operator, make_user):
    other = make_user("operator", username="oscar-operator")
    first = timezone.now() + timedelta(hours=1)
    services.change_schedule(actor=operator, change=approved_change, start=first)
    moved = services.change_schedule(actor=other, change=approved_change, start=first + timedelta(hours=1))
    assert moved.status == ChangeStatus.SCHEDULED and moved.scheduled_by == other
    assert moved.scheduled_start == first + timedelta(hours=1)
    assert DecisionRecord.objects.filter(action="change.reschedule", actor=other).count() == 1


def test_a_temporal_clock_ahead_of_the_wall_clock_makes_nothing_due_early(settings, approved_change, operator):
    change = services.change_schedule(actor=operator, change=approved_change, start=timezone.now() + timedelta(hours=1))
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        workflow_id=f"change-{change.pk}",
        current_attempt_scheduled_time=timezone.now() + timedelta(days=30),
    )
    assert abs((env.run(change_activities._now) - timezone.now()).total_seconds()) < 5  # the wall clock counts
    settings.OTA_CHANGE_TIMERS_TEMPORAL_CLOCK = True  # the time-skipping test server only
    assert env.run(change_activities._now) > timezone.now() + timedelta(days=29)
