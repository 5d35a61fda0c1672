"""Scheduled maintenance workflows (no Django: the Temporal sandbox), started by Temporal schedules.

ImageRepositoryRefreshWorkflow: one activity that re-signs the image repository's timestamp and snapshot when they
are near expiry; the schedule `image-repository-refresh` starts it every IMAGE_REPOSITORY_REFRESH_EVERY_SECONDS and
skips a firing while the previous run is still going.

ExpiryAuditWorkflow: one activity that flags keys and metadata close to expiry (alert rows, decision records);
the schedule `expiry-audit` starts it every EXPIRY_AUDIT_EVERY_SECONDS.

RecurringAuditWorkflow: one activity that runs one recurring audit (stale devices, inventory drift, overdue reviews,
telemetry gaps, certificates) and opens, refreshes and resolves its findings; the schedules `audit-<kind>` start it.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.types import (
        AUDIT_WORKFLOW,
        EXPIRY_AUDIT_WORKFLOW,
        IMAGE_REPOSITORY_REFRESH_WORKFLOW,
        AuditResult,
        AuditRun,
        ExpiryAuditResult,
        MaintenanceActivity,
        RepositoryRefresh,
    )


@workflow.defn(name=IMAGE_REPOSITORY_REFRESH_WORKFLOW)
class ImageRepositoryRefreshWorkflow:
    """Re-sign the image repository's timestamp/snapshot before they expire (the refresh service decides which)."""

    @workflow.run
    async def run(self) -> RepositoryRefresh:
        refreshed: RepositoryRefresh = await workflow.execute_activity(
            MaintenanceActivity.IMAGE_REPOSITORY_REFRESH,
            result_type=RepositoryRefresh,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=5)),
        )
        return refreshed


@workflow.defn(name=EXPIRY_AUDIT_WORKFLOW)
class ExpiryAuditWorkflow:
    """Flag keys and metadata close to expiry, or trusted when they must not be (the expiry audit service decides)."""

    @workflow.run
    async def run(self) -> ExpiryAuditResult:
        audited: ExpiryAuditResult = await workflow.execute_activity(
            MaintenanceActivity.EXPIRY_AUDIT,
            result_type=ExpiryAuditResult,
            start_to_close_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=5)),
        )
        return audited


@workflow.defn(name=AUDIT_WORKFLOW)
class RecurringAuditWorkflow:
    """Run one recurring audit: its activity computes the findings from the database and syncs the finding rows."""

    @workflow.run
    async def run(self, run: AuditRun) -> AuditResult:
        audited: AuditResult = await workflow.execute_activity(
            MaintenanceActivity.AUDIT_RUN,
            run,
            result_type=AuditResult,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=RetryPolicy(maximum_attempts=5, initial_interval=timedelta(seconds=10)),
        )
        return audited
