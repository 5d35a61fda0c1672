"""Rollout activities: each one service call, sync, on the worker's thread pool, with connection hygiene.

A DomainError (a rule said no) becomes a non-retryable ApplicationError named after it; anything else
(database down, deadlock) is retried by Temporal. Every step is idempotent on (rollout, wave).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import close_old_connections
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ota_project.errors import DomainError
from rollouts import rollout_services as steps
from workflows.types import (
    Activity,
    AuthorizeRequest,
    FinishRequest,
    HaltRequest,
    PhaseChange,
    RollbackRef,
    WaveAssignment,
    WaveHealth,
    WaveRef,
    WindowWait,
)

F = TypeVar("F", bound=Callable[..., Any])


def _orm_activity(func: F) -> F:
    """Fresh, healthy database connections around the call; domain refusals are not retried."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return func(*args, **kwargs)
        except DomainError as exc:
            # The type names the refusal (NotPermitted, Conflict, InvalidInput) so the client maps it to 403/409/400.
            raise ApplicationError(
                exc.message, {"code": exc.code, "fields": exc.fields}, type=type(exc).__name__, non_retryable=True
            ) from exc
        finally:
            close_old_connections()

    return wrapper  # type: ignore[return-value]


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
    return WaveAssignment(ref.wave_index, steps.wave_assign(rollout_id=ref.rollout_id, wave_index=ref.wave_index))


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
    """Re-check a person's action against the database and write it to the decision record."""
    steps.human_action_authorize(
        rollout_id=request.rollout_id,
        action=request.action,
        actor_id=request.actor_id,
        reason=request.reason,
        wave_index=request.wave_index,
    )


ACTIVITIES = [
    wave_window_wait,
    wave_assign,
    wave_health,
    rollout_phase,
    rollout_halt,
    rollback_assign,
    rollback_health,
    rollout_finish,
    human_action_authorize,
]
