"""An in-memory fleet behind fake activities with the real activity names, scripted tick by tick.

The workflow only ever sees counts, so the fleet's size is just a number here: 10 devices or 100,000 cost the
same, which is the point of the history-size tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from workflows.types import (
    Activity,
    AuthorizeRequest,
    FinishRequest,
    HaltRequest,
    Phase,
    PhaseChange,
    RollbackRef,
    WaveAssignment,
    WaveHealth,
    WaveRef,
    WindowWait,
)

# Health of one wave at its n-th health check (1-based): a list (the last entry repeats) or a function of n.
HealthScript = Sequence[WaveHealth] | Callable[[int], WaveHealth]


def counts(total: int, *, succeeded: int = 0, failed: int = 0, timed_out: int = 0, cancelled: int = 0) -> WaveHealth:
    """A wave's health where every device not yet finished (or cancelled) is in progress."""
    in_progress = total - succeeded - failed - timed_out - cancelled
    assert in_progress >= 0, "more finished devices than the wave has"
    return WaveHealth(
        total=total,
        in_progress=in_progress,
        succeeded=succeeded,
        failed=failed,
        timed_out=timed_out,
        cancelled=cancelled,
    )


def finishing(total: int, *, ticks: int, failure_rate: float = 0.0) -> Callable[[int], WaveHealth]:
    """All devices finish evenly over `ticks` health checks, failing at `failure_rate`."""

    def at(check: int) -> WaveHealth:
        done = min(total, total * check // max(1, ticks))
        failed = round(done * failure_rate)
        return counts(total, succeeded=done - failed, failed=failed)

    return at


@dataclass
class FakeFleet:
    """Scripted wave health plus a record of every activity call, in order."""

    waves: list[HealthScript]
    window_waits: dict[int, list[int]] = field(default_factory=dict)  # wave -> seconds answered per ask
    rollback_script: HealthScript | None = None
    refuse_actor_ids: set[int] = field(default_factory=set)  # the database says no for these people
    refuse_assign_waves: set[int] = field(default_factory=set)  # the database refuses to assign these waves
    authorize_gate: asyncio.Event | None = None  # authorizations wait for it (a slow database)
    calls: list[tuple[str, Any]] = field(default_factory=list)
    deployments: dict[int, int] = field(default_factory=dict)  # wave -> deployments in the "database"
    assign_calls: dict[int, int] = field(default_factory=dict)
    health_checks: dict[int, int] = field(default_factory=dict)  # wave -> health checks so far
    rollback_checks: int = 0
    rollback_offered: int = 0
    decisions: list[AuthorizeRequest] = field(default_factory=list)
    phases: list[PhaseChange] = field(default_factory=list)
    halts: list[HaltRequest] = field(default_factory=list)
    finishes: list[FinishRequest] = field(default_factory=list)
    promotions: list[int] = field(default_factory=list)  # waves promoted automatically (WAVE_PROMOTE)
    # One health check (wave, check) waits for `health_release` after setting `health_held` (a slow database).
    hold_health_check: tuple[int, int] | None = None
    health_held: asyncio.Event = field(default_factory=asyncio.Event)
    health_release: asyncio.Event = field(default_factory=asyncio.Event)

    def _health(self, script: HealthScript, check: int) -> WaveHealth:
        if callable(script):
            return script(check)
        return replace(script[min(check, len(script)) - 1])

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    @activity.defn(name=Activity.WAVE_WINDOW_WAIT)
    async def wave_window_wait(self, ref: WaveRef) -> WindowWait:
        self.calls.append((Activity.WAVE_WINDOW_WAIT, ref.wave_index))
        answers = self.window_waits.get(ref.wave_index, [])
        seconds = answers.pop(0) if answers else 0
        return WindowWait(seconds=seconds, reason="blackout window" if seconds else "")

    @activity.defn(name=Activity.WAVE_ASSIGN)
    async def wave_assign(self, ref: WaveRef) -> WaveAssignment:
        self.calls.append((Activity.WAVE_ASSIGN, ref.wave_index))
        self.assign_calls[ref.wave_index] = self.assign_calls.get(ref.wave_index, 0) + 1
        if ref.wave_index in self.refuse_assign_waves:
            raise ApplicationError("The release was revoked.", type="DomainError", non_retryable=True)
        # Idempotent like the real bulk insert: a second call finds the rows and adds none.
        total = self._health(self.waves[ref.wave_index], 1).total
        self.deployments.setdefault(ref.wave_index, total)
        return WaveAssignment(ref.wave_index, self.deployments[ref.wave_index])

    @activity.defn(name=Activity.WAVE_HEALTH)
    async def wave_health(self, ref: WaveRef) -> WaveHealth:
        assert ref.wave_index in self.deployments, "health of a wave that was never assigned"
        check = self.health_checks.get(ref.wave_index, 0) + 1
        self.health_checks[ref.wave_index] = check
        self.calls.append((Activity.WAVE_HEALTH, (ref.wave_index, check)))
        if self.hold_health_check == (ref.wave_index, check):
            self.health_held.set()
            await self.health_release.wait()
        return self._health(self.waves[ref.wave_index], check)

    @activity.defn(name=Activity.ROLLOUT_PHASE)
    async def rollout_phase(self, change: PhaseChange) -> None:
        self.calls.append((Activity.ROLLOUT_PHASE, (change.phase, change.gate, change.wave_index)))
        self.phases.append(change)

    @activity.defn(name=Activity.ROLLOUT_HALT)
    async def rollout_halt(self, request: HaltRequest) -> int:
        self.calls.append((Activity.ROLLOUT_HALT, request.wave_index))
        self.halts.append(request)
        return 0

    @activity.defn(name=Activity.ROLLBACK_ASSIGN)
    async def rollback_assign(self, ref: RollbackRef) -> int:
        self.calls.append((Activity.ROLLBACK_ASSIGN, ref.rollout_id))
        # Every device of an assigned wave that took the new release (here: all that did not fail outright).
        self.rollback_offered = sum(
            self._health(self.waves[wave], max(1, self.health_checks.get(wave, 1))).succeeded
            for wave in self.deployments
        )
        return self.rollback_offered

    @activity.defn(name=Activity.ROLLBACK_HEALTH)
    async def rollback_health(self, ref: RollbackRef) -> WaveHealth:
        self.rollback_checks += 1
        self.calls.append((Activity.ROLLBACK_HEALTH, self.rollback_checks))
        if self.rollback_script is not None:
            return self._health(self.rollback_script, self.rollback_checks)
        # Default: everything offered is restored on the second check.
        if self.rollback_checks == 1:
            return counts(self.rollback_offered)
        return counts(self.rollback_offered, succeeded=self.rollback_offered)

    @activity.defn(name=Activity.ROLLOUT_FINISH)
    async def rollout_finish(self, request: FinishRequest) -> None:
        self.calls.append((Activity.ROLLOUT_FINISH, request.outcome))
        self.finishes.append(request)

    @activity.defn(name=Activity.HUMAN_ACTION_AUTHORIZE)
    async def human_action_authorize(self, request: AuthorizeRequest) -> None:
        self.calls.append((Activity.HUMAN_ACTION_AUTHORIZE, request.action))
        if self.authorize_gate is not None:
            await self.authorize_gate.wait()
        if request.actor_id in self.refuse_actor_ids:
            raise ApplicationError("The database says this person may not act.", type="DomainError", non_retryable=True)
        self.decisions.append(request)

    @activity.defn(name=Activity.WAVE_PROMOTE)
    async def wave_promote(self, ref: WaveRef) -> bool:
        self.calls.append((Activity.WAVE_PROMOTE, ref.wave_index))
        # Like the database (rollouts.rollout_services.waves.wave_promote): no automatic promotion of a rollout
        # whose projected phase is paused.
        if self.phases and self.phases[-1].phase == Phase.PAUSED:
            raise ApplicationError("A paused rollout is not promoted.", type="DomainError", non_retryable=True)
        self.promotions.append(ref.wave_index)
        return True

    @property
    def activities(self) -> list[Callable[..., Any]]:
        return [
            self.wave_window_wait,
            self.wave_assign,
            self.wave_health,
            self.rollout_phase,
            self.rollout_halt,
            self.rollback_assign,
            self.rollback_health,
            self.rollout_finish,
            self.human_action_authorize,
            self.wave_promote,
        ]
