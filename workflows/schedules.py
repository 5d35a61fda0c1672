"""Temporal schedules of the project: created when a worker with the default registrations starts (idempotent).

`image-repository-refresh` starts ImageRepositoryRefreshWorkflow every IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS on
the worker's task queue; a firing while the previous run is still going is skipped. An existing schedule is left
as it is (an operator may have paused it: `temporal schedule toggle --schedule-id image-repository-refresh`).
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
    IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS,
    IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID,
    IMAGE_REPOSITORY_REFRESH_WORKFLOW,
)


async def ensure_schedules(client: Client, task_queue: str) -> None:
    """Create the image repository's refresh schedule on `task_queue` unless it exists."""
    schedule = Schedule(
        action=ScheduleActionStartWorkflow(
            IMAGE_REPOSITORY_REFRESH_WORKFLOW, id=IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID, task_queue=task_queue
        ),
        spec=ScheduleSpec(
            intervals=[ScheduleIntervalSpec(every=timedelta(seconds=IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS))]
        ),
        policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
    )
    try:
        await client.create_schedule(IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID, schedule)
    except ScheduleAlreadyRunningError:
        pass  # made by another worker (or an earlier start of this one)
