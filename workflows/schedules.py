"""Temporal schedules of the project: created when a worker with the default registrations starts (idempotent).

`image-repository-refresh` starts ImageRepositoryRefreshWorkflow every IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS on
the worker's task queue; a firing while the previous run is still going is skipped. An existing schedule is left
as it is (an operator may have paused it: `temporal schedule toggle --schedule-id image-repository-refresh`).
`expiry-audit` starts ExpiryAuditWorkflow every EXPIRY_AUDIT_EVERY_SECONDS the same way.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
)

from workflows.types import (
    EXPIRY_AUDIT_EVERY_SECONDS,
    EXPIRY_AUDIT_SCHEDULE_ID,
    EXPIRY_AUDIT_WORKFLOW,
    IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS,
    IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID,
    IMAGE_REPOSITORY_REFRESH_WORKFLOW,
)


async def ensure_schedules(client: Client, task_queue: str) -> None:
    """Create the image repository's refresh and expiry-audit schedules on `task_queue` unless they exist."""
    for schedule_id, workflow_name, every in (
        (
            IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID,
            IMAGE_REPOSITORY_REFRESH_WORKFLOW,
            IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS,
        ),
        (EXPIRY_AUDIT_SCHEDULE_ID, EXPIRY_AUDIT_WORKFLOW, EXPIRY_AUDIT_EVERY_SECONDS),
    ):
        schedule = Schedule(
            action=ScheduleActionStartWorkflow(workflow_name, id=schedule_id, task_queue=task_queue),
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every))]),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        )
        try:
            await client.create_schedule(schedule_id, schedule)
        except ScheduleAlreadyRunningError:
            pass  # made by another worker (or an earlier start of this one)
