"""The recurring audits' Temporal schedules on the real dev server: made by the worker, idempotently, and a firing
of one opens the finding of a planted case."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from temporalio.client import ScheduleActionStartWorkflow

from approvals.audit.choices import AuditKind
from approvals.audit.models import AuditFinding
from devices.models import Device
from tests.factories import DeviceFactory
from tests.temporal_support import in_temporal_loop, running_worker, wait_until
from workflows.client import temporal_client
from workflows.schedules import ensure_schedules, project_schedules
from workflows.types import AUDIT_EVERY_SECONDS, AUDIT_WORKFLOW, audit_schedule_id


async def _schedules_delete(task_queue: str) -> None:
    client = await temporal_client()
    for schedule_id in project_schedules(task_queue):
        try:
            await client.get_schedule_handle(schedule_id).delete()
        except Exception:  # noqa: BLE001 - no such schedule yet
            pass


@pytest.mark.django_db(transaction=True)
def test_the_worker_schedules_every_audit_idempotently_and_a_firing_opens_the_planted_finding(
    temporal_settings, settings
):
    settings.OTA_AUDIT_STALE_DEVICE_DAYS = 7
    stale = DeviceFactory.create()
    Device.objects.filter(pk=stale.pk).update(last_seen_at=timezone.now() - timedelta(days=9))
    queue = settings.TEMPORAL_TASK_QUEUE
    in_temporal_loop(_schedules_delete(queue))  # the session's dev server is shared: start from no schedule
    try:
        with running_worker():
            client = in_temporal_loop(temporal_client())
            for kind, every in AUDIT_EVERY_SECONDS.items():
                described = in_temporal_loop(client.get_schedule_handle(audit_schedule_id(kind)).describe())
                action = described.schedule.action
                assert isinstance(action, ScheduleActionStartWorkflow)
                assert (action.workflow, action.task_queue) == (AUDIT_WORKFLOW, queue)
                assert described.schedule.spec.intervals[0].every == timedelta(seconds=every)
            # An operator paused one; a second worker start (ensure again) neither fails nor resumes it.
            paused = client.get_schedule_handle(audit_schedule_id(AuditKind.CERTIFICATES))
            in_temporal_loop(paused.pause(note="maintenance"))
            in_temporal_loop(ensure_schedules(client, queue))
            assert in_temporal_loop(paused.describe()).schedule.state.paused

            in_temporal_loop(client.get_schedule_handle(audit_schedule_id(AuditKind.STALE_DEVICES)).trigger())
            wait_until(
                lambda: AuditFinding.objects.filter(
                    kind=AuditKind.STALE_DEVICES, subject=stale.serial, resolved_at__isnull=True
                ).exists(),
                30,
                "the stale device flagged",
            )
    finally:
        in_temporal_loop(_schedules_delete(queue))
