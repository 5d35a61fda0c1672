"""Rollout activities: each one service call, sync, on the worker's thread pool, with connection hygiene.

A DomainError (a rule said no) becomes a non-retryable ApplicationError named after it; anything else
(database down, deadlock) is retried by Temporal. Every step is idempotent on (rollout, wave), and every decision
it records carries a step key (rollouts.step_keys), so a retried step records nothing twice.
"""

from __future__ import annotations

import contextvars
import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from django.db import close_old_connections
from temporalio import activity
from temporalio.exceptions import ApplicationError

from approvals.audit.security import SecurityEventKind, security_event
from devices.firmware.repository.expiry import expiry_audit as run_expiry_audit
from devices.firmware.repository.services import image_repository_refresh as repository_refresh
from ota_project.errors import DomainError
from rollouts import rollout_services as steps
from rollouts.audits import AUDITS
from rollouts.audits import audit_run as run_audit
from workflows.types import (
    Activity,
    AuditResult,
    AuditRun,
    AuthorizeRequest,
    ExpiryAuditResult,
    FinishRequest,
    HaltRequest,
    MaintenanceActivity,
    PhaseChange,
    RepositoryRefresh,
    RollbackRef,
    WaveAssignment,
    WaveHealth,
    WaveRef,
    WindowWait,
    rollout_workflow_id,
)

PayloadT = TypeVar("PayloadT")
ResultT = TypeVar("ResultT")

# Bulk steps heartbeat this often; the workflow gives them a heartbeat timeout a few times longer, so a worker that
# dies inside one is noticed in seconds, not after the step's whole start-to-close timeout.
HEARTBEAT_SECONDS = 2.0


def _require_own_workflow(payload: Any) -> None:
    """An activity acts only for the one workflow of its rollout (`rollout-<pk>`): anything else is forged."""
    rollout_id = getattr(payload, "rollout_id", None)
    workflow_id = activity.info().workflow_id
    if rollout_id is None or workflow_id != rollout_workflow_id(rollout_id):
        raise steps.workflow_step_forged(
            rollout_id=rollout_id,
            message=f"workflow {workflow_id!r} is not the rollout's workflow {rollout_workflow_id(rollout_id or 0)!r}",
        )


@contextmanager
def _heartbeating() -> Iterator[None]:
    """Heartbeat from a helper thread (in the activity's context) while a long, single-transaction step runs."""
    done = threading.Event()
    context = contextvars.copy_context()

    def beat() -> None:
        while not done.wait(HEARTBEAT_SECONDS):
            activity.heartbeat()

    thread = threading.Thread(target=context.run, args=(beat,), daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def _orm_activity(func: Callable[[PayloadT], ResultT]) -> Callable[[PayloadT], ResultT]:
    """Fresh, healthy database connections around the call, heartbeats while it runs, and only for the rollout's
    own workflow; domain refusals are not retried."""

    @functools.wraps(func)
    def wrapper(payload: PayloadT) -> ResultT:
        close_old_connections()
        try:
            _require_own_workflow(payload)
            with _heartbeating():
                return func(payload)
        except DomainError as exc:
            # The type names the refusal (NotPermitted, Conflict, InvalidInput) so the client maps it to 403/409/400.
            raise ApplicationError(
                exc.message, {"code": exc.code, "fields": exc.fields}, type=type(exc).__name__, non_retryable=True
            ) from exc
        finally:
            close_old_connections()

    return wrapper


@activity.defn(name=Activity.WAVE_WINDOW_WAIT)
@_orm_activity
def wave_window_wait(ref: WaveRef) -> WindowWait:
    """Seconds until the wave may start: blackout windows and the targeted regions' maintenance windows."""
    seconds, reason = steps.wave_window_wait(rollout_id=ref.rollout_id, wave_index=ref.wave_index)
    return WindowWait(seconds=seconds, reason=reason)


@activity.defn(name=Activity.WAVE_ASSIGN)
@_orm_activity
def wave_assign(ref: WaveRef) -> WaveAssignment:
    """Bulk-create the wave's per-device deployments (idempotent)."""
    return steps.wave_assign(rollout_id=ref.rollout_id, wave_index=ref.wave_index)


@activity.defn(name=Activity.WAVE_HEALTH)
@_orm_activity
def wave_health(ref: WaveRef) -> WaveHealth:
    """Expire missed deadlines and count the wave's deployments by outcome."""
    return steps.wave_health(rollout_id=ref.rollout_id, wave_index=ref.wave_index)


@activity.defn(name=Activity.ROLLOUT_PHASE)
@_orm_activity
def rollout_phase(change: PhaseChange) -> None:
    """Project the workflow's phase, wave and gate into the database."""
    steps.rollout_phase(change)


@activity.defn(name=Activity.ROLLOUT_HALT)
@_orm_activity
def rollout_halt(request: HaltRequest) -> int:
    """Halt the rollout and stop offering the release anywhere."""
    return steps.rollout_halt(rollout_id=request.rollout_id, wave_index=request.wave_index, reason=request.reason)


@activity.defn(name=Activity.ROLLBACK_ASSIGN)
@_orm_activity
def rollback_assign(ref: RollbackRef) -> int:
    """Offer the rollback release to every device that took the new image (idempotent)."""
    return steps.rollback_assign(rollout_id=ref.rollout_id)


@activity.defn(name=Activity.ROLLBACK_HEALTH)
@_orm_activity
def rollback_health(ref: RollbackRef) -> WaveHealth:
    """Expire missed rollback deadlines and count rollback deployments by outcome."""
    return steps.rollback_health(rollout_id=ref.rollout_id)


@activity.defn(name=Activity.ROLLOUT_FINISH)
@_orm_activity
def rollout_finish(request: FinishRequest) -> None:
    """End the rollout and close its change."""
    steps.rollout_finish(
        rollout_id=request.rollout_id, outcome=request.outcome, reason=request.reason, actor_id=request.actor_id
    )


@activity.defn(name=Activity.HUMAN_ACTION_AUTHORIZE)
@_orm_activity
def human_action_authorize(request: AuthorizeRequest) -> None:
    """Re-check a person's action against the database and write it to the decision record, once per update."""
    steps.human_action_authorize(
        rollout_id=request.rollout_id,
        action=request.action,
        actor_id=request.actor_id,
        reason=request.reason,
        wave_index=request.wave_index,
        token=request.token,
        update_id=request.update_id,
    )


@activity.defn(name=Activity.WAVE_PROMOTE)
@_orm_activity
def wave_promote(ref: WaveRef) -> bool:
    """Promote a passed `auto` wave after re-checking its verdict in the database (recorded once)."""
    return steps.wave_promote(rollout_id=ref.rollout_id, wave_index=ref.wave_index)


@activity.defn(name=MaintenanceActivity.IMAGE_REPOSITORY_REFRESH)
def image_repository_refresh() -> RepositoryRefresh:
    """Re-sign the image repository's snapshot/timestamp when near expiry (idempotent: a retry finds them fresh)."""
    close_old_connections()
    try:
        return RepositoryRefresh(resigned=repository_refresh())
    finally:
        close_old_connections()


@activity.defn(name=MaintenanceActivity.EXPIRY_AUDIT)
def expiry_audit() -> ExpiryAuditResult:
    """Flag keys and metadata close to expiry (alert rows, decision records; idempotent: a retry finds them open)."""
    close_old_connections()
    try:
        findings = run_expiry_audit()
        return ExpiryAuditResult(
            findings=len(findings), critical=sum(1 for finding in findings if finding.severity == "critical")
        )
    finally:
        close_old_connections()


@activity.defn(name=MaintenanceActivity.AUDIT_RUN)
def audit_run(run: AuditRun) -> AuditResult:
    """Run one recurring audit from the database (idempotent: a retry refreshes the same findings). A kind that is
    no audit is refused for good and recorded: only the project's schedules start this workflow."""
    if run.kind not in AUDITS:
        security_event(
            kind=SecurityEventKind.ACTION_FORGED,
            source="audits.run",
            message=f"Workflow {activity.info().workflow_id} asked for an unknown audit.",
            subject=str(run.kind)[:200],
        )
        raise ApplicationError(f"Unknown audit {run.kind!r}", type="UnknownAudit", non_retryable=True)
    close_old_connections()
    try:
        synced = run_audit(kind=run.kind)
        return AuditResult(
            kind=run.kind,
            opened=synced.opened,
            refreshed=synced.refreshed,
            resolved=synced.resolved,
            open=synced.open,
            critical=synced.critical,
        )
    finally:
        close_old_connections()


ACTIVITIES: list[Callable[..., Any]] = [
    wave_window_wait,
    wave_assign,
    wave_health,
    rollout_phase,
    rollout_halt,
    rollback_assign,
    rollback_health,
    rollout_finish,
    human_action_authorize,
    wave_promote,
    image_repository_refresh,
    expiry_audit,
    audit_run,
]
