"""Reviews that cannot be forgotten: the emergency retrospective and the post-implementation review are reminded a
day before they are due and escalated to the CAB chair when overdue (recorded once each, by the system for the
CAB), the change's workflow stays until they are done, and an author with an overdue retrospective files no further
emergency change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.utils import timezone

from approvals import services
from approvals import timers as change_timers
from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from ota_project.errors import InvalidInput
from ota_project.roles import Role
from rollouts import rollout_services
from tests.changes.support import TimeSkipping, time_skipping_worker
from tests.temporal_support import in_temporal_loop, wait_until
from workflows.change_types import ChangeState, change_workflow_id


@pytest.fixture(autouse=True)
def _no_temporal(settings: Any) -> None:
    settings.TEMPORAL_ENABLED = False


def _emergency(requester: Any, change_fields: dict[str, Any], ecab: Any) -> ChangeRequest:
    change = services.change_create(
        actor=requester, **{**change_fields, "change_type": "emergency", "emergency_reason": "eCall outage"}
    )
    change = services.change_submit(actor=requester, change=change)
    return services.approval_grant(actor=ecab, change=change, revision=1)


@pytest.mark.django_db
def test_an_author_with_an_overdue_retrospective_files_no_further_emergency_change(
    requester, change_fields, make_user, cab_member
):
    ecab = make_user(Role.EMERGENCY_CAB, username="erin-ecab")
    first = _emergency(requester, change_fields, ecab)
    assert first.retrospective_due_at is not None
    services.change_create(actor=requester, **{**change_fields, "change_type": "emergency", "emergency_reason": "x"})
    ChangeRequest.objects.filter(pk=first.pk).update(retrospective_due_at=timezone.now() - timedelta(minutes=1))
    count = ChangeRequest.objects.count()
    with pytest.raises(InvalidInput) as refused:
        services.change_create(
            actor=requester, **{**change_fields, "change_type": "emergency", "emergency_reason": "y"}
        )
    assert f"CR-{first.pk}" in refused.value.message and "change_type" in refused.value.fields
    assert ChangeRequest.objects.count() == count
    normal = services.change_create(actor=requester, **change_fields)  # other changes are fine
    with pytest.raises(InvalidInput):
        services.change_update(actor=requester, change=normal, change_type="emergency", emergency_reason="z")
    assert ChangeRequest.objects.get(pk=normal.pk).change_type == "normal"
    services.change_retrospective_complete(actor=cab_member, change=first, comment="Root cause understood.")
    services.change_create(actor=requester, **{**change_fields, "change_type": "emergency", "emergency_reason": "w"})


@pytest.mark.django_db
def test_the_retrospective_is_reminded_then_escalated_once_each(
    requester, change_fields, make_user, cab_member, django_capture_on_commit_callbacks
):
    ecab = make_user(Role.EMERGENCY_CAB, username="erin-ecab")
    make_user(Role.CAB_CHAIR, username="chloe-chair")
    change = _emergency(requester, change_fields, ecab)
    due = change.retrospective_due_at
    assert due is not None
    fire = change_timers.change_follow_up_reviews_fire
    with django_capture_on_commit_callbacks(execute=True):
        assert fire(change_id=change.pk, now=due - timedelta(days=2)) == []
        assert fire(change_id=change.pk, now=due - timedelta(hours=23)) == ["retrospective reminder"]
        assert fire(change_id=change.pk, now=due - timedelta(hours=22)) == []
        assert fire(change_id=change.pk, now=due) == ["retrospective escalation"]
        assert fire(change_id=change.pk, now=due + timedelta(days=3)) == []
    reminder = DecisionRecord.objects.get(action="change.retrospective_reminder")
    assert isinstance(reminder.after, dict) and reminder.actor_name == "system:change-timer for the CAB"
    assert requester.username in reminder.after["notified"]
    escalation = DecisionRecord.objects.get(action="change.retrospective_escalated")
    assert isinstance(escalation.after, dict) and escalation.after["notified"] == ["chloe-chair"]
    assert any(m.to == ["chloe-chair@example.test"] for m in mail.outbox)


@pytest.fixture
def timers(settings: Any) -> Any:
    settings.OTA_CHANGE_TIMERS_TEMPORAL_CLOCK = True  # the test server's skipped time is "now" for the activities
    with time_skipping_worker() as skipping:
        yield skipping


@pytest.mark.django_db(transaction=True)
def test_a_completed_change_keeps_its_workflow_until_its_post_implementation_review(
    timers: TimeSkipping, approved_change, operator, cab_member, make_user
):
    make_user(Role.CAB_CHAIR, username="chloe-chair")
    rollout_services.rollout_start(actor=operator, change=approved_change, start_workflow=False)
    change = services.change_mark_implemented(actor=None, change=approved_change, outcome="completed")
    assert change.status == ChangeStatus.COMPLETED and change.post_review_due_at is not None
    handle = timers.start(change.pk)
    state = timers.settled(change.pk, lambda s: s.next_due == "post_review_reminder")
    assert not state.closed
    timers.skip(timedelta(days=4, minutes=1))
    wait_until(lambda: DecisionRecord.objects.filter(action="change.post_review_reminder").exists(), 30, "reminder")
    timers.skip(timedelta(days=1))
    wait_until(lambda: DecisionRecord.objects.filter(action="change.post_review_escalated").exists(), 30, "escalation")
    services.change_post_implementation_review(actor=cab_member, change=change, comment="Went as planned.")
    timers.nudge(change.pk, "change.post_implementation_review")
    final: ChangeState = in_temporal_loop(handle.result())  # the workflow ends: nothing is owed any more
    assert final.closed and final.status == ChangeStatus.COMPLETED and handle.id == change_workflow_id(change.pk)
    timers.save_history(change.pk, "post_review_reminded_escalated_done")
