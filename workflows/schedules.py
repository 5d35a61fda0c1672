"""Temporal schedules of the project: created when a worker with the default registrations starts (idempotent).

`image-repository-refresh` starts ImageRepositoryRefreshWorkflow every IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS on
the worker's task queue; a firing while the previous run is still going is skipped. An existing schedule is left
as it is (an operator may have paused it: `temporal schedule toggle --schedule-id image-repository-refresh`).
`expiry-audit` starts ExpiryAuditWorkflow every EXPIRY_AUDIT_EVERY_SECONDS the same way, and `audit-<kind>`
(audit-stale-devices, audit-inventory-drift, audit-overdue-reviews, audit-telemetry-gaps, audit-certificates) start
RecurringAuditWorkflow with AuditRun(kind) every AUDIT_EVERY_SECONDS[kind].
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
    AUDIT_EVERY_SECONDS,
    AUDIT_WORKFLOW,
    EXPIRY_AUDIT_EVERY_SECONDS,
    EXPIRY_AUDIT_SCHEDULE_ID,
    EXPIRY_AUDIT_WORKFLOW,
    IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS,
    IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID,
    IMAGE_REPOSITORY_REFRESH_WORKFLOW,
    AuditRun,
    audit_schedule_id,
)


def project_schedules(task_queue: str) -> dict[str, Schedule]:
    """Every schedule the project runs, by id: the repository refresh, the expiry audit and the recurring audits."""
    plain = [
        (
            IMAGE_REPOSITORY_REFRESH_SCHEDULE_ID,
            IMAGE_REPOSITORY_REFRESH_WORKFLOW,
            IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS,
        ),
        (EXPIRY_AUDIT_SCHEDULE_ID, EXPIRY_AUDIT_WORKFLOW, EXPIRY_AUDIT_EVERY_SECONDS),
    ]
    actions: list[tuple[str, ScheduleActionStartWorkflow, int]] = [
        (schedule_id, ScheduleActionStartWorkflow(workflow_name, id=schedule_id, task_queue=task_queue), every)
        for schedule_id, workflow_name, every in plain
    ]
    for kind, every in AUDIT_EVERY_SECONDS.items():
        schedule_id = audit_schedule_id(kind)
        action = ScheduleActionStartWorkflow(AUDIT_WORKFLOW, AuditRun(kind=kind), id=schedule_id, task_queue=task_queue)
        actions.append((schedule_id, action, every))
    return {
        schedule_id: Schedule(
            action=action,
            spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=timedelta(seconds=every))]),
            policy=SchedulePolicy(overlap=ScheduleOverlapPolicy.SKIP),
        )
        for schedule_id, action, every in actions
    }


async def ensure_schedules(client: Client, task_queue: str) -> None:
    """Create every project schedule on `task_queue` unless it exists (an existing one is left as it is)."""
    for schedule_id, schedule in project_schedules(task_queue).items():
        try:
            await client.create_schedule(schedule_id, schedule)
        except ScheduleAlreadyRunningError:
            pass  # made by another worker (or an earlier start of this one)
