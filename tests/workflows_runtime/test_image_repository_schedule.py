"""The Temporal schedule that keeps the image repository's timestamp and snapshot fresh, on the real dev server."""

from __future__ import annotations

import uuid

import pytest
from temporalio.client import ScheduleActionStartWorkflow

from devices.firmware.repository.models import ImageMetadata
from tests.firmware.repository_support import repository_start
from tests.temporal_support import in_temporal_loop, running_worker, wait_until
from workflows.client import temporal_client
from workflows.types import IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID, IMAGE_REPOSITORY_REFRESH_WORKFLOW


async def _schedule_delete() -> None:
    handle = (await temporal_client()).get_schedule_handle(IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID)
    try:
        await handle.delete()
    except Exception:  # noqa: BLE001 - no such schedule yet
        pass


@pytest.mark.django_db(transaction=True)
def test_the_worker_schedules_the_refresh_and_a_firing_resigns_the_timestamp_near_expiry(
    temporal_settings, security_officer, settings, tmp_path
):
    settings.PKCS11_LABEL_PREFIX = f"schedule-test-{uuid.uuid4().hex[:12]}"
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository"
    repository_start(security_officer)
    # The day-long timestamp now counts as a 30-day one with a single day left: within the refresh margin.
    settings.IMAGE_REPOSITORY_EXPIRY_DAYS = {**settings.IMAGE_REPOSITORY_EXPIRY_DAYS, "timestamp": 30}
    in_temporal_loop(_schedule_delete())  # the session's dev server is shared: start from no schedule
    try:
        with running_worker():  # the default registrations: the worker makes the schedule
            handle = in_temporal_loop(temporal_client()).get_schedule_handle(IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID)
            action = in_temporal_loop(handle.describe()).schedule.action
            assert isinstance(action, ScheduleActionStartWorkflow)
            assert (action.workflow, action.task_queue) == (
                IMAGE_REPOSITORY_REFRESH_WORKFLOW,
                settings.TEMPORAL_TASK_QUEUE,
            )
            in_temporal_loop(handle.trigger())
            wait_until(
                lambda: ImageMetadata.objects.filter(role="timestamp").count() == 2, 30, "the timestamp re-signed"
            )
    finally:
        in_temporal_loop(_schedule_delete())
    assert (settings.IMAGE_REPOSITORY_DIR / "metadata" / "timestamp.json").read_bytes() == bytes(
        ImageMetadata.objects.get(role="timestamp", version=2).content
    )
