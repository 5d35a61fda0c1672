"""Change freezes (fleet-wide or per region, with a reason and an owner): submission, scheduling, Start (and so the
scheduled start's pre-flight) and a running rollout's next wave respect them; an emergency change passes with a
security officer's approval. Refusals leave everything as it was."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from approvals import services
from approvals.audit.models import DecisionRecord, SecurityEvent
from approvals.choices import ChangeStatus
from approvals.models import ChangeFreeze, ChangeRequest
from ota_project.errors import Conflict, InvalidInput
from ota_project.roles import Role
from rollouts import rollout_services
from rollouts.models import Rollout
from rollouts.rollout_services.scheduled import change_timers_fire
from tests.factories import RegionFactory


@pytest.fixture(autouse=True)
def _no_temporal(settings: Any) -> None:
    settings.TEMPORAL_ENABLED = False


def _freeze(owner: Any, *, hours: float = 2, start: Any = None, region: Any = None, reason: str = "Peak season"):
    start = start or timezone.now() - timedelta(minutes=5)
    return ChangeFreeze.objects.create(
        reason=reason, starts_at=start, ends_at=start + timedelta(hours=hours), region=region, owner=owner
    )


def test_start_is_refused_during_a_fleet_wide_freeze_and_nothing_changes(approved_change, operator, make_user):
    owner = make_user(Role.CAB_MEMBER, username="fred-freeze")
    _freeze(owner, reason="Black Friday")
    records = DecisionRecord.objects.count()
    with pytest.raises(Conflict) as refused:
        rollout_services.rollout_start(actor=operator, change=approved_change)
    assert refused.value.code == "change_freeze"
    assert "Black Friday" in refused.value.message and "fred-freeze" in refused.value.message
    assert not Rollout.objects.exists() and DecisionRecord.objects.count() == records
    assert ChangeRequest.objects.get(pk=approved_change.pk).status == ChangeStatus.APPROVED
    event = SecurityEvent.objects.get(kind="start_refused", subject=f"change:{approved_change.pk}")
    assert event.actor_name == operator.username and "Black Friday" in event.message


def test_a_freeze_in_another_region_does_not_apply(approved_change, operator, make_user):
    _freeze(make_user(username="fred-freeze"), region=RegionFactory.create(code="ap-south"))
    rollout = rollout_services.rollout_start(actor=operator, change=approved_change, start_workflow=False)
    assert rollout.pk is not None


def test_a_freeze_in_a_targeted_region_applies(approved_change, operator, make_user, fleet):
    _freeze(make_user(username="fred-freeze"), region=fleet["region"])
    with pytest.raises(Conflict, match="in region eu-west"):
        rollout_services.rollout_start(actor=operator, change=approved_change)


def test_scheduling_into_a_freeze_is_refused(approved_change, operator, make_user):
    freeze = _freeze(make_user(username="fred-freeze"), start=timezone.now() + timedelta(hours=1))
    with pytest.raises(InvalidInput) as refused:
        services.change_schedule(actor=operator, change=approved_change, start=freeze.starts_at + timedelta(minutes=1))
    assert "start" in refused.value.fields
    assert ChangeRequest.objects.get(pk=approved_change.pk).status == ChangeStatus.APPROVED
    services.change_schedule(actor=operator, change=approved_change, start=freeze.ends_at + timedelta(minutes=1))


def test_the_scheduled_start_is_held_when_a_freeze_began_after_scheduling(approved_change, operator, make_user):
    start = timezone.now() + timedelta(minutes=30)
    services.change_schedule(actor=operator, change=approved_change, start=start)
    _freeze(make_user(username="fred-freeze"), start=start - timedelta(minutes=1), reason="Incident INC-7")
    state = change_timers_fire(change_id=approved_change.pk, now=start)
    assert state.done == ["scheduled start held"]
    change = ChangeRequest.objects.get(pk=approved_change.pk)
    assert change.status == ChangeStatus.APPROVED and "Incident INC-7" in change.start_held_reason
    assert not Rollout.objects.exists()


def test_submission_is_refused_when_the_whole_window_is_frozen(requester, change_fields, make_user):
    owner = make_user(username="fred-freeze")
    change = services.change_create(actor=requester, **change_fields)
    start, end = change.requested_window_start, change.requested_window_end
    # Two freezes back to back cover the window between them.
    _freeze(owner, start=start - timedelta(hours=1), hours=48)
    _freeze(owner, start=start + timedelta(hours=47), hours=24 * 30)
    with pytest.raises(InvalidInput) as refused:
        services.change_submit(actor=requester, change=change)
    assert "requested_window_end" in refused.value.fields
    assert ChangeRequest.objects.get(pk=change.pk).status == ChangeStatus.DRAFT
    ChangeFreeze.objects.filter(starts_at__gt=start).update(starts_at=end - timedelta(hours=1))  # a gap opens
    assert services.change_submit(actor=requester, change=change).status == ChangeStatus.SUBMITTED


def test_an_emergency_change_passes_a_freeze_with_a_security_officer_approval(
    requester, change_fields, make_user, security_officer, operator
):
    ecab = make_user(Role.EMERGENCY_CAB, username="erin-ecab")
    _freeze(make_user(username="fred-freeze"))
    change = services.change_create(
        actor=requester, **{**change_fields, "change_type": "emergency", "emergency_reason": "eCall outage"}
    )
    change = services.change_submit(actor=requester, change=change)  # emergencies are filed during a freeze
    change = services.approval_grant(actor=ecab, change=change, revision=1)
    assert change.status == ChangeStatus.APPROVED
    with pytest.raises(Conflict, match="security officer"):
        rollout_services.rollout_start(actor=operator, change=change)
    services.approval_grant(actor=security_officer, change=change, revision=1, comment="Freeze exemption granted.")
    rollout = rollout_services.rollout_start(actor=operator, change=change, start_workflow=False)
    assert rollout.status == "scheduled"


def test_a_freeze_that_begins_during_a_rollout_holds_its_next_wave(approved_change, operator, make_user):
    rollout = rollout_services.rollout_start(actor=operator, change=approved_change, start_workflow=False)
    assert rollout_services.wave_window_wait(rollout_id=rollout.pk, wave_index=1)[0] == 0
    freeze = _freeze(make_user(username="fred-freeze"), hours=3, reason="Holiday")
    seconds, reason = rollout_services.wave_window_wait(rollout_id=rollout.pk, wave_index=1)
    remaining = (freeze.ends_at - timezone.now()).total_seconds()
    assert remaining <= seconds <= remaining + 5 and "Holiday" in reason


def test_the_change_page_shows_the_freezes_in_its_window(approved_change, cab_member, make_user):
    from tests.web.helpers import page_client, text_of

    _freeze(make_user(username="fred-freeze"), start=timezone.now() + timedelta(days=1), reason="Year-end freeze")
    page = text_of(page_client(cab_member).get(f"/changes/{approved_change.pk}/"))
    assert "Change freeze: fleet-wide freeze" in page and "Year-end freeze" in page
