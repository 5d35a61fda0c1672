"""The Temporal schedule of the expiry audit, next to the repository refresh, on the real dev server."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import ScheduleActionStartWorkflow

from approvals.audit.models import AuditFinding
from tests.firmware.repository_support import repository_start
from tests.temporal_support import in_temporal_loop, running_worker, wait_until
from workflows.client import temporal_client
from workflows.types import EXPIRY_AUDIT_SCHEDULE_ID, EXPIRY_AUDIT_WORKFLOW, IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID


async def _schedules_delete() -> None:
    client = await temporal_client()
    for schedule_id in (EXPIRY_AUDIT_SCHEDULE_ID, IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID):
        try:
            await client.get_schedule_handle(schedule_id).delete()
        except Exception:  # noqa: BLE001 - no such schedule yet
            pass


@pytest.mark.django_db(transaction=True)
def test_the_worker_schedules_the_expiry_audit_and_a_firing_flags_what_is_close_to_expiry(
    temporal_settings, security_officer, settings, tmp_path
):
    settings.PKCS11_LABEL_PREFIX = f"expiry-schedule-{uuid.uuid4().hex[:12]}"
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository"
    repository_start(security_officer)
    settings.EXPIRY_WARN_ROOT_DAYS = 400  # the year-long root is now "within the warning margin"
    in_temporal_loop(_schedules_delete())  # the session's dev server is shared: start from no schedule
    try:
        with running_worker():
            handle = in_temporal_loop(temporal_client()).get_schedule_handle(EXPIRY_AUDIT_SCHEDULE_ID)
            action = in_temporal_loop(handle.describe()).schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow)
            assert (action.workflow, action.task_queue) == (EXPIRY_AUDIT_WORKFLOW, settings.TEMPORAL_TASK_QUEUE)
            in_temporal_loop(handle.trigger())
            wait_until(
                lambda: AuditFinding.objects.filter(
                    kind="signing_expiry", subject="root", code="expires_soon"
                ).exists(),
                30,
                "the root flagged",
            )
    finally:
        in_temporal_loop(_schedules_delete())
    assert AuditFinding.objects.filter(kind="signing_expiry", resolved_at__isnull=True).count() == 1
