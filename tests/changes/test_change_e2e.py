"""End to end on the real Temporal dev server: a change submitted, approved, scheduled and started by its timer,
through the services alone (they start and signal the change's workflow after each decision commits), with the
worker the project runs; and a change submitted while Temporal is down gets its workflow from the reconcile loop."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone
from temporalio.client import WorkflowExecutionStatus

from approvals import services
from approvals import timers as change_timers
from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from ota_project.net import free_port
from rollouts.models import Rollout
from tests.temporal_support import in_temporal_loop, running_worker, wait_until
from workflows.change_types import change_workflow_id
from workflows.client import temporal_client

pytestmark = pytest.mark.django_db(transaction=True)


def _listed(query: str) -> list[str]:
    async def listing() -> list[str]:
        client = await temporal_client()
        return [execution.id async for execution in client.list_workflows(query)]

    return in_temporal_loop(listing())


def _status(change_id: int) -> WorkflowExecutionStatus | None:
    async def describe() -> WorkflowExecutionStatus | None:
        client = await temporal_client()
        return (await client.get_workflow_handle(change_workflow_id(change_id)).describe()).status

    return in_temporal_loop(describe())


def test_a_change_submitted_approved_and_scheduled_starts_by_its_timer(
    temporal_settings: Any,
    requester: Any,
    cab_member: Any,
    cab_member_2: Any,
    operator: Any,
    change_fields: dict[str, Any],
):
    with running_worker():
        change = services.change_create(actor=requester, **change_fields)
        change = services.change_submit(actor=requester, change=change)
        assert _status(change.pk) == WorkflowExecutionStatus.RUNNING  # started by the submission, after commit
        wait_until(
            lambda: (
                _listed(
                    f'OtaChangeId={change.pk} AND OtaChangeStatus="submitted" AND OtaChangeType="{change.change_type}"'
                    f' AND OtaRiskLevel="{change.risk_level}" AND OtaReviewDueAt > "{timezone.now().isoformat()}"'
                )
                != []
            ),
            30,
            "the workflow to show the change as submitted, its type, risk and review deadline",
            interval=0.2,
        )
        services.approval_grant(actor=cab_member, change=change, revision=1)
        change = services.approval_grant(actor=cab_member_2, change=change, revision=1)
        start = timezone.now() + timedelta(seconds=4)
        change = services.change_schedule(actor=operator, change=change, start=start)
        wait_until(
            lambda: (
                _listed(
                    f'OtaChangeId={change.pk} AND OtaChangeStatus="scheduled" AND OtaScheduledStart IS NOT NULL'
                    " AND OtaApprovalExpiresAt IS NOT NULL AND OtaReviewDueAt IS NULL"
                )
                != []
            ),
            30,
            "the workflow to show the change as scheduled, with its start and approval expiry (no review due)",
            interval=0.2,
        )
        assert not Rollout.objects.filter(change=change).exists()  # not before its time
        wait_until(lambda: Rollout.objects.filter(change=change).exists(), 60, "the timer to start the rollout")
        assert timezone.now() >= start
        rollout = Rollout.objects.get(change=change)
        assert rollout.started_by == operator
        assert ChangeRequest.objects.get(pk=change.pk).status == ChangeStatus.IMPLEMENTING
        assert DecisionRecord.objects.filter(
            action="rollout.scheduled_start", actor_name=f"system:change-timer for {operator.username}"
        ).exists()
        # The rollout's own workflow was started by the start, as for a person's Start.
        wait_until(lambda: _listed(f"OtaChangeId={change.pk} AND OtaPhase IS NOT NULL") != [], 30, "the rollout")


def test_a_submission_while_temporal_is_down_stands_and_the_reconcile_starts_its_workflow(
    temporal_settings: Any, requester: Any, change_fields: dict[str, Any]
):
    address = temporal_settings.TEMPORAL_ADDRESS
    temporal_settings.TEMPORAL_ADDRESS = f"127.0.0.1:{free_port()}"  # nothing listens there
    change = services.change_submit(actor=requester, change=services.change_create(actor=requester, **change_fields))
    assert ChangeRequest.objects.get(pk=change.pk).status == ChangeStatus.SUBMITTED  # the decision stands
    assert change_timers.change_workflows_ensure() == []  # still down: nothing reached
    temporal_settings.TEMPORAL_ADDRESS = address
    assert change.pk in change_timers.change_workflows_ensure()
    assert _status(change.pk) == WorkflowExecutionStatus.RUNNING
