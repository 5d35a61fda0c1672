"""RolloutWorkflow: one durable workflow per rollout (id `rollout-<pk>`) driving its waves, gates and rollback.

Django-free by rule (the sandbox stays on): activities are called by their stable names from `types.Activity`,
so this module never imports their implementations. Deterministic by rule: time comes from `workflow.now()`,
waits are durable timers (`workflow.wait_condition(..., timeout=...)`), and there is no randomness or I/O.

State machine (phases are `types.Phase`, gates `types.Gate`):

    scheduled --assign wave 0--> running --pass, auto--> (continue as new) next wave ... --last wave--> completed
    running --pass, manual--> awaiting_promotion[gate promotion] --promote--> next wave
    running --inconclusive--> awaiting_promotion[gate inconclusive] --promote by a person--> next wave
    running | awaiting_promotion --fail--> halt at once --halt_and_rollback--> rolling_back --> rolled_back
                                                        --halt--> halted[gate halted] --abort | rollback-->
    any unfinished phase --abort--> halt + aborted;  any but rolling_back --rollback--> rolling_back
    running | awaiting_promotion --pause--> paused --resume--> back where it was
    a step refused for good (DomainError) --> halt + halted[gate halted]: a person aborts or rolls back

Pause stops the workflow from assigning the next wave and from promoting; monitoring goes on while paused, so
a wave that fails during a pause is still halted at once (safety wins over the pause, which it clears).
Monitoring also goes on at the promotion and inconclusive gates; the workflow never promotes past an
inconclusive wave by itself.

History stays independent of fleet size: per wave one assign, one health check per monitoring tick and a few
projections, never anything per device. The run continues as new after every promoted wave and whenever the
server suggests it (or the history passes HISTORY_EVENT_BUDGET) mid-wave, carrying what the next run needs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, NoReturn

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows import policy
    from workflows.search_attributes import OTA_PHASE, progress_updates
    from workflows.types import (
        WORKFLOW_NAME,
        Activity,
        AuthorizeRequest,
        FinishRequest,
        Gate,
        HaltRequest,
        HumanAction,
        Phase,
        PhaseChange,
        Query,
        RollbackRef,
        RolloutInput,
        RolloutProgress,
        SignalVerdict,
        Update,
        Verdict,
        WaveAssignment,
        WaveHealth,
        WavePlan,
        WaveRef,
        WindowWait,
    )

# Version guards (workflow.patched) for changes made after rollouts were already running; histories recorded
# before them replay on the old path (tests/workflows/histories/v1_before_patches.*, tests/workflows/test_replay.py).
# The monitoring wait is clamped to the end of the soak (see _next_check_seconds).
MONITOR_CLAMP_PATCH = "monitor-check-clamped-to-soak-end"
# An automatic promotion is projected, with the health that justified it, before the next step (decision record).
AUTO_PROMOTION_RECORD_PATCH = "auto-promotion-recorded"
# An automatic promotion is a step of its own (WAVE_PROMOTE) that the database re-checks and records once.
AUTO_PROMOTION_VERIFIED_PATCH = "auto-promotion-verified"
# Every run (first, after continue-as-new, after a reset) projects its state first, idempotently.
REPROJECT_ON_START_PATCH = "reproject-on-start"
# A state change not yet projected (a resume accepted while the health check that passed the wave was in flight)
# reaches the database before the automatic promotion, which the database refuses for a paused rollout.
PROJECT_BEFORE_PROMOTION_PATCH = "project-before-promotion"
# The final phase (completed, aborted, rolled_back) reaches the search attributes too, with the pause flag cleared:
# before this, a finished rollout kept showing the last phase a projection upserted.
FINAL_SEARCH_ATTRIBUTES_PATCH = "search-attributes-final"
# _watch_wave's result when a person promoted (Verdict.PASS: promoted automatically).
_PROMOTED_BY_PERSON = "promoted_by_person"

# Continue as new well before the server's own limits, so a run's history stays a few thousand events.
HISTORY_EVENT_BUDGET = 2000

# Infrastructure errors are retried without end (the database may be down for a while); domain errors are not.
_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["DomainError"],
)
# A person waits for the answer to an update: give up after a few attempts instead of hanging the caller.
_AUTHORIZE_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=5),
    maximum_attempts=3,
    non_retryable_error_types=["DomainError"],
)
# Short timeouts: a decision devices depend on must not wait for a dead worker's long timeout. Single-row steps get
# a few seconds; steps that touch many rows heartbeat (workflows/activities.py) and are retried within seconds of a
# worker's death through their heartbeat timeout, however long they may legitimately run.
_SHORT = timedelta(seconds=10)
_HEARTBEAT = timedelta(seconds=10)
_QUERY = timedelta(minutes=2)  # aggregate counts over a wave's deployments (heartbeating)
_BULK = timedelta(minutes=10)  # bulk writes over up to ~100k deployment rows (heartbeating)

_END_ABORT = Update.ABORT
_END_ROLLBACK = Update.ROLLBACK
_STUCK = "stuck"


class _EndRequested(Exception):
    """Internal: a person (or the abort policy) ended the wave loop; caught in `run`, never leaves the workflow."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@workflow.defn(name=WORKFLOW_NAME)
class RolloutWorkflow:
    """Drive one rollout wave by wave; halt on failure, hold on doubt, and let only permitted people decide."""

    @workflow.init
    def __init__(self, inp: RolloutInput) -> None:
        # @workflow.init: the state exists before any update validator or query runs, even in the first task.
        self._input = inp
        self._phase: str = Phase.SCHEDULED
        self._paused = False
        self._gate: str = Gate.NONE
        self._wave_index = 0
        self._wave_assigned = False
        self._soak_started_at = ""
        self._last_health: WaveHealth | None = None
        self._last_verdict = ""
        self._message = ""
        self._halted = False
        self._rollback_reason = ""
        self._rollback_actor_id: int | None = None
        # Requests accepted by update handlers, acted on by the main loop:
        self._promote_request: HumanAction | None = None
        self._end_request: tuple[str, HumanAction] | None = None
        # What the database projection last showed (phase, gate, wave):
        self._projected: tuple[str, str, int] = ("", "", -1)
        self._action_lock = asyncio.Lock()
        self._load(inp)

    # ------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: RolloutInput) -> RolloutProgress:
        """Run the waves from `inp.start_wave` (or resume the rollback) until the rollout is finished."""
        mode = _END_ROLLBACK if inp.rolling_back else ""
        stuck_reason = ""
        if self._patched(REPROJECT_ON_START_PATCH):
            # The database never keeps showing a wave or gate this run has left (e.g. a pause accepted while the
            # previous run continued as new); the projection is idempotent.
            await self._project(self._message or "Workflow run started.")
        while True:
            try:
                if mode == _END_ROLLBACK:
                    return await self._roll_back()
                if mode == _END_ABORT:
                    return await self._abort()
                if mode == _STUCK:
                    await self._hold_stuck(stuck_reason)
                return await self._run_waves()
            except _EndRequested as end:
                mode = end.kind
            except ActivityError as err:
                # A step was refused for good (a DomainError; infrastructure errors are retried without end):
                # do not fail the workflow and leave the rollout half-done; halt and let a person decide.
                if mode in (_END_ABORT, _STUCK):
                    raise
                mode, stuck_reason = _STUCK, _failure_message(err)

    def _load(self, inp: RolloutInput) -> None:
        """Take over the state a previous run carried across continue-as-new (defaults on the first run)."""
        self._wave_index = inp.start_wave
        self._wave_assigned = inp.wave_assigned
        self._soak_started_at = inp.wave_soak_started_at
        self._paused = inp.paused
        self._gate = inp.gate
        self._rollback_reason = inp.rollback_reason
        self._rollback_actor_id = inp.rollback_actor_id
        if inp.rolling_back:
            self._phase, self._halted = Phase.ROLLING_BACK, True
        elif inp.gate == Gate.HALTED:
            self._phase, self._halted = Phase.HALTED, True
        elif inp.gate:
            self._phase = Phase.AWAITING_PROMOTION
        elif inp.start_wave > 0 or inp.wave_assigned:
            self._phase = Phase.RUNNING
        # The previous run (or the service that created the rollout) already projected this state.
        self._projected = self._projection_key()

    @property
    def _inp(self) -> RolloutInput:
        return self._input

    # ---------------------------------------------------------------- waves

    async def _run_waves(self) -> RolloutProgress:
        waves = self._inp.waves
        while self._wave_index < len(waves):
            index, wave = self._wave_index, waves[self._wave_index]
            if self._gate == Gate.HALTED:
                await self._hold_halted()
            if not self._wave_assigned:
                await self._wait_for_window(index)
                assignment = await workflow.execute_activity(
                    Activity.WAVE_ASSIGN,
                    WaveRef(self._inp.rollout_id, index),
                    result_type=WaveAssignment,
                    start_to_close_timeout=_BULK,
                    heartbeat_timeout=_HEARTBEAT,
                    retry_policy=_RETRY,
                )
                self._wave_assigned = True
                # The soak starts when the wave really opened to devices (the database's time, returned by the
                # step), not when this workflow task ran: a worker that died after the assignment loses no soak.
                self._soak_started_at = assignment.opened_at or workflow.now().isoformat()
                self._phase = Phase.RUNNING
                self._last_health, self._last_verdict = None, ""
                await self._project(f"Wave {wave.name} assigned to {assignment.assigned} devices; soaking.")
            verdict = await self._watch_wave(index, wave)
            if verdict == Verdict.FAIL:
                await self._fail(index, wave)
            if verdict == Verdict.PASS and self._patched(AUTO_PROMOTION_VERIFIED_PATCH):
                if self._projection_key() != self._projected and self._patched(PROJECT_BEFORE_PROMOTION_PATCH):
                    await self._project(self._message)
                # The database re-checks the pass and records it once; only then may the next wave open.
                await workflow.execute_activity(
                    Activity.WAVE_PROMOTE,
                    WaveRef(self._inp.rollout_id, index),
                    result_type=bool,
                    start_to_close_timeout=_SHORT,
                    retry_policy=_RETRY,
                )
            elif verdict == Verdict.PASS and self._patched(AUTO_PROMOTION_RECORD_PATCH):
                # The system promoted on its own: the record shows on what evidence.
                await self._project(_auto_promotion_reason(wave, self._last_health or WaveHealth()))
            # Promoted (automatically after a pass, or by a person at a gate).
            if index == len(waves) - 1:
                return await self._finish(Phase.COMPLETED, f"All {len(waves)} waves passed.", None)
            # A fresh run per wave keeps every run's history small; finish what handlers started first.
            await workflow.wait_condition(workflow.all_handlers_finished)
            self._raise_if_ending()
            if self._projection_key() != self._projected:
                await self._project(self._message)
            self._continue_as_new(start_wave=index + 1)
        return await self._finish(Phase.COMPLETED, "No waves left to run.", None)  # resumed past the last wave

    async def _wait_for_window(self, index: int) -> None:
        """Wait (durably) until the wave may start and the rollout is not paused; pause stops new assignments."""
        while True:
            if self._paused:
                self._message = f"Paused before wave {self._inp.waves[index].name}."
                await self._wait(None, wake=lambda: not self._paused)
                continue
            window = await workflow.execute_activity(
                Activity.WAVE_WINDOW_WAIT,
                WaveRef(self._inp.rollout_id, index),
                result_type=WindowWait,
                start_to_close_timeout=_SHORT,
                retry_policy=_RETRY,
            )
            self._raise_if_ending()
            if window.seconds <= 0:
                if self._paused:  # paused while asking: ask again after the resume
                    continue
                return
            self._message = f"Waiting {window.seconds}s for an allowed window: {window.reason}".rstrip(": ")
            await self._wait(workflow.now() + timedelta(seconds=window.seconds), wake=lambda: self._paused)

    async def _watch_wave(self, index: int, wave: WavePlan) -> str:
        """Monitor the wave on durable timers until it fails (FAIL), passes and is promoted automatically (PASS),
        or a person promotes it at a gate (_PROMOTED_BY_PERSON)."""
        interval = policy.monitor_interval(self._inp.monitor_interval_seconds)
        soak_end = datetime.fromisoformat(self._soak_started_at) + timedelta(seconds=wave.soak_seconds)
        next_check = workflow.now()
        check_due = True
        while True:
            self._raise_if_ending()
            if self._promote_request is not None:
                self._promote_request = None
                return _PROMOTED_BY_PERSON
            if check_due:
                # Continue as new here, before the due check, so the next run's first check is this one.
                await self._maybe_continue_as_new()
                checked_at = workflow.now()
                health = await workflow.execute_activity(
                    Activity.WAVE_HEALTH,
                    WaveRef(self._inp.rollout_id, index),
                    result_type=WaveHealth,
                    start_to_close_timeout=_QUERY,
                    heartbeat_timeout=_HEARTBEAT,
                    retry_policy=_RETRY,
                )
                soak_done = workflow.now() >= soak_end
                verdict = policy.wave_verdict(health, wave, soak_done=soak_done)
                self._last_health = health
                if verdict == Verdict.FAIL:
                    # Refuse promotions and pauses from this instant on, before any await.
                    self._last_verdict, self._gate, self._phase = verdict, Gate.NONE, Phase.HALTED
                    return verdict
                if self._gate == Gate.NONE:
                    self._last_verdict = verdict
                    if verdict == Verdict.INCONCLUSIVE:
                        await self._open_gate(Gate.INCONCLUSIVE, _inconclusive_reason(wave, health))
                    elif verdict == Verdict.CONTINUE:
                        self._message = _progress(wave, health, soak_done)
                remaining = (soak_end - checked_at).total_seconds()
                next_check = checked_at + timedelta(seconds=self._next_check_seconds(interval, remaining))
            if self._gate == Gate.NONE and self._last_verdict == Verdict.PASS:
                if wave.promotion == "manual":
                    await self._open_gate(Gate.PROMOTION, f"Wave {wave.name} passed; waiting for an operator.")
                    continue
                if not self._paused:
                    return Verdict.PASS
                self._message = f"Wave {wave.name} passed; paused, it is promoted on resume."
            check_due = not await self._wait(next_check, wake=self._wave_wake)

    def _next_check_seconds(self, interval: int, soak_remaining: float) -> float:
        """Seconds from this check to the next; since MONITOR_CLAMP_PATCH, never past the end of the soak.

        Version 1 waited a full interval even when the soak ended sooner, judging the wave up to one interval
        late. Histories recorded before the patch carry no marker, so they replay on the old path (see
        tests/workflows/histories/v1_before_patches.*). The patch is asked only when the clamp would change
        the wait, so runs whose soak is a multiple of the interval record no marker at all.
        """
        clamp = policy.soak_clamp_applies(interval, soak_remaining) and self._patched(MONITOR_CLAMP_PATCH)
        return policy.next_check_seconds(interval, soak_remaining, clamp_to_soak_end=clamp)

    def _patched(self, patch_id: str) -> bool:
        """`workflow.patched`, in one place (tests/workflows/test_replay.py overrides it to prove the guards matter)."""
        return workflow.patched(patch_id)

    def _wave_wake(self) -> bool:
        """Wake the monitoring wait early for a promotion, or for a resume that lets a passed wave promote."""
        return self._promote_request is not None or (
            self._gate == Gate.NONE and self._last_verdict == Verdict.PASS and not self._paused
        )

    async def _open_gate(self, gate: str, reason: str) -> None:
        self._gate = gate
        self._phase = Phase.HALTED if gate == Gate.HALTED else Phase.AWAITING_PROMOTION
        self._message = reason
        await self._project(reason)

    async def _fail(self, index: int, wave: WavePlan) -> NoReturn:
        """The wave failed: stop offering the release at once, then follow the abort policy."""
        health = self._last_health or WaveHealth()
        reason = _failure_reason(wave, health)
        self._paused, self._gate, self._phase = False, Gate.NONE, Phase.HALTED  # a halt overrides a pause
        self._message = reason
        await self._halt(reason)
        if self._inp.abort_policy == "halt_and_rollback":
            self._rollback_reason, self._rollback_actor_id = reason, None
            raise _EndRequested(_END_ROLLBACK)
        await self._open_gate(Gate.HALTED, reason + " Waiting for an operator to abort or roll back.")
        await self._hold_halted()

    async def _hold_stuck(self, failure: str) -> NoReturn:
        """A step failed for good: stop offering the release and wait at the HALTED gate for abort or rollback."""
        reason = f"Halted: a rollout step failed and needs an operator ({failure})."
        self._paused, self._gate, self._phase, self._message = False, Gate.NONE, Phase.HALTED, reason
        if not self._halted:
            await self._halt(reason)
        await self._open_gate(Gate.HALTED, reason)
        await self._hold_halted()

    async def _hold_halted(self) -> NoReturn:
        """Gate HALTED: nothing happens (and nothing is written to history) until an abort or a rollback."""
        while True:
            await self._wait(None)

    # ------------------------------------------------------------- endings

    async def _abort(self) -> RolloutProgress:
        """A person aborted: stop offering the release, then finish as aborted."""
        assert self._end_request is not None
        action = self._end_request[1]
        self._gate = Gate.NONE
        if not self._halted:
            await self._halt(f"Aborted by an operator: {action.reason}")
        return await self._finish(Phase.ABORTED, action.reason, action.actor_id)

    async def _roll_back(self) -> RolloutProgress:
        """Saga: offer the rollback release to every device that took the new one, track it, finish rolled_back."""
        if self._end_request is not None and self._end_request[0] == _END_ROLLBACK:
            action = self._end_request[1]
            self._rollback_reason, self._rollback_actor_id = action.reason, action.actor_id
            self._end_request = None
        entering = self._phase != Phase.ROLLING_BACK
        # Set before any await, so validators refuse a second rollback and a pause at once.
        self._phase, self._gate, self._paused = Phase.ROLLING_BACK, Gate.NONE, False
        self._message = f"Rolling back: {self._rollback_reason}"
        if not self._halted:
            await self._halt(self._message)
        if entering:
            self._last_health, self._last_verdict = None, ""
            await self._project(self._message)
        # Idempotent: a resumed saga (after continue-as-new or a crash) asks again and gets the same rows.
        offered = await workflow.execute_activity(
            Activity.ROLLBACK_ASSIGN,
            RollbackRef(self._inp.rollout_id),
            result_type=int,
            start_to_close_timeout=_BULK,
            heartbeat_timeout=_HEARTBEAT,
            retry_policy=_RETRY,
        )
        self._message = f"Rollback offered to {offered} devices."
        interval = policy.monitor_interval(self._inp.monitor_interval_seconds)
        while True:
            self._raise_if_ending()
            await self._maybe_continue_as_new()
            health = await workflow.execute_activity(
                Activity.ROLLBACK_HEALTH,
                RollbackRef(self._inp.rollout_id),
                result_type=WaveHealth,
                start_to_close_timeout=_QUERY,
                heartbeat_timeout=_HEARTBEAT,
                retry_policy=_RETRY,
            )
            self._last_health = health
            if health.unfinished == 0:
                break
            self._message = f"Rolling back: {health.finished} of {health.total} devices finished."
            await self._wait(workflow.now() + timedelta(seconds=interval))
        summary = (
            f"Rolled back: {health.succeeded} of {health.total} devices restored, {health.failures} failed, "
            f"{health.cancelled} cancelled. Cause: {self._rollback_reason}"
        )
        return await self._finish(Phase.ROLLED_BACK, summary, self._rollback_actor_id)

    async def _halt(self, reason: str) -> None:
        await workflow.execute_activity(
            Activity.ROLLOUT_HALT,
            HaltRequest(self._inp.rollout_id, self._wave_index, reason),
            start_to_close_timeout=_BULK,
            heartbeat_timeout=_HEARTBEAT,
            retry_policy=_RETRY,
        )
        self._halted = True

    async def _finish(self, outcome: str, reason: str, actor_id: int | None) -> RolloutProgress:
        await workflow.execute_activity(
            Activity.ROLLOUT_FINISH,
            FinishRequest(self._inp.rollout_id, outcome, reason, actor_id),
            start_to_close_timeout=_BULK,
            heartbeat_timeout=_HEARTBEAT,
            retry_policy=_RETRY,
        )
        self._phase, self._gate, self._paused, self._message = outcome, Gate.NONE, False, reason
        self._projected = self._projection_key()
        self._show_in_visibility(FINAL_SEARCH_ATTRIBUTES_PATCH)
        # Let accepted updates (already refused by their re-check, or finished) complete before the run closes.
        await workflow.wait_condition(workflow.all_handlers_finished)
        return self.status()

    # ---------------------------------------------------- waiting, projection

    async def _wait(self, until: datetime | None, wake: Callable[[], bool] = lambda: False) -> bool:
        """Durable wait until `until` (None: no deadline) or `wake()`; True if woken; raises for abort/rollback.

        Keeps the database projection fresh meanwhile (pause and resume show up at once), which the main loop
        alone writes so projections never race each other.
        """
        while True:
            self._raise_if_ending()
            if self._projection_key() != self._projected:
                await self._project(self._message)
                continue
            if wake():
                return True
            timeout = None if until is None else (until - workflow.now()).total_seconds()
            if timeout is not None and timeout <= 0:
                return False
            try:
                await workflow.wait_condition(
                    lambda: self._end_request is not None or self._projection_key() != self._projected or wake(),
                    timeout=timeout,
                )
            except TimeoutError:
                self._raise_if_ending()
                return False

    def _raise_if_ending(self) -> None:
        if self._end_request is not None:
            raise _EndRequested(self._end_request[0])

    def _projection_key(self) -> tuple[str, str, int]:
        return (self._shown_phase(), self._gate, self._wave_index)

    async def _project(self, reason: str) -> None:
        """Write the workflow's state into the database (rollout row + decision record of system actions)."""
        key = self._projection_key()
        await workflow.execute_activity(
            Activity.ROLLOUT_PHASE,
            PhaseChange(
                rollout_id=self._inp.rollout_id,
                phase=key[0],
                wave_index=self._wave_index,
                gate=self._gate,
                reason=reason,
                health=self._last_health,
            ),
            start_to_close_timeout=_SHORT,
            retry_policy=_RETRY,
        )
        self._projected = key
        self._show_in_visibility("search-attributes-upserted")

    def _show_in_visibility(self, patch_id: str) -> None:
        """Keep the Temporal UI's filters (phase, wave, paused) current. Only for workflows started with the rollout
        search attributes (so they are registered), and guarded: histories recorded before `patch_id` lack the
        command."""
        if OTA_PHASE in workflow.info().typed_search_attributes and workflow.patched(patch_id):  # type: ignore[comparison-overlap]  # __contains__ takes a key, iteration yields pairs
            workflow.upsert_search_attributes(
                progress_updates(phase=self._shown_phase(), wave=self._wave_index, paused=self._paused)
            )

    # ------------------------------------------------------ continue-as-new

    async def _maybe_continue_as_new(self) -> None:
        info = workflow.info()
        if not (info.is_continue_as_new_suggested() or info.get_current_history_length() >= HISTORY_EVENT_BUDGET):
            return
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._end_request is not None or self._promote_request is not None:
            return  # act on it first; the caller's loop comes back here
        if self._projection_key() != self._projected:
            return
        self._continue_as_new(start_wave=self._wave_index)

    def _continue_as_new(self, *, start_wave: int) -> NoReturn:
        same_wave = start_wave == self._wave_index
        inp = self._inp
        workflow.continue_as_new(
            RolloutInput(
                rollout_id=inp.rollout_id,
                change_id=inp.change_id,
                author_id=inp.author_id,
                waves=inp.waves,
                abort_policy=inp.abort_policy,
                monitor_interval_seconds=inp.monitor_interval_seconds,
                start_wave=start_wave,
                wave_assigned=self._wave_assigned and same_wave,
                wave_soak_started_at=self._soak_started_at if same_wave else "",
                paused=self._paused,
                gate=self._gate if same_wave else Gate.NONE,
                rolling_back=self._phase == Phase.ROLLING_BACK,
                rollback_reason=self._rollback_reason,
                rollback_actor_id=self._rollback_actor_id,
            )
        )

    # ---------------------------------------------------------- human actions

    def _shown_phase(self) -> str:
        if self._paused and self._phase in policy.PAUSABLE_PHASES:
            return Phase.PAUSED
        return self._phase

    def _phase_for_validation(self) -> str:
        """The phase a new request is judged against, counting requests accepted but not yet acted on."""
        if self._end_request is not None:
            return Phase.ABORTED if self._end_request[0] == _END_ABORT else Phase.ROLLING_BACK
        return self._shown_phase()

    def _refusal(self, action: str, request: HumanAction) -> str:
        return policy.human_action_refusal(
            action,
            actor_id=request.actor_id,
            actor_roles=request.actor_roles,
            author_id=self._inp.author_id,
            phase=self._phase_for_validation(),
            gate=self._gate,
            gated_wave=self._wave_index if self._gate else -1,
            requested_wave=request.wave_index,
        )

    def _validate(self, action: str, request: HumanAction) -> None:
        reason = self._refusal(action, request)
        if reason:
            raise ValueError(reason)

    async def _authorize_and_apply(
        self, action: str, request: HumanAction, apply: Callable[[], Any]
    ) -> RolloutProgress:
        """Re-check under a lock, let the database re-check and record the decision, then change state."""
        # The update's id is in the history: the same on every retry of the activity and every replay, so the
        # database records this decision once (a payload field, not a command: replays of older histories match).
        update = workflow.current_update_info()
        async with self._action_lock:
            self._refuse_if_moved(action, request)
            await workflow.execute_activity(
                Activity.HUMAN_ACTION_AUTHORIZE,
                AuthorizeRequest(
                    rollout_id=self._inp.rollout_id,
                    action=action,
                    actor_id=request.actor_id,
                    reason=request.reason,
                    wave_index=request.wave_index if action == Update.PROMOTE else self._wave_index,
                    token=request.token,
                    update_id=update.id if update is not None else "",
                ),
                start_to_close_timeout=_SHORT,
                retry_policy=_AUTHORIZE_RETRY,
            )
            self._refuse_if_moved(action, request)  # the workflow may have moved during the round trip
            apply()
            return self.status()

    def _refuse_if_moved(self, action: str, request: HumanAction) -> None:
        """The validator judged an earlier state; an ApplicationError fails just this update, not the workflow."""
        reason = self._refusal(action, request)
        if reason:
            raise ApplicationError(reason, type="ActionRefused", non_retryable=True)

    @workflow.update(name=Update.PROMOTE)
    async def promote(self, request: HumanAction) -> RolloutProgress:
        """An operator (never the author) promotes past the gate open on exactly the named wave."""

        def apply() -> None:
            self._promote_request = request
            self._gate = Gate.NONE
            self._phase = Phase.RUNNING
            self._message = f"Wave {self._inp.waves[self._wave_index].name} promoted by an operator: {request.reason}"

        return await self._authorize_and_apply(Update.PROMOTE, request, apply)

    @promote.validator
    def _validate_promote(self, request: HumanAction) -> None:
        self._validate(Update.PROMOTE, request)

    @workflow.update(name=Update.ABORT)
    async def abort(self, request: HumanAction) -> RolloutProgress:
        """An operator (never the author) aborts: halt and finish as aborted."""

        def apply() -> None:
            self._end_request = (_END_ABORT, request)

        return await self._authorize_and_apply(Update.ABORT, request, apply)

    @abort.validator
    def _validate_abort(self, request: HumanAction) -> None:
        self._validate(Update.ABORT, request)

    @workflow.update(name=Update.ROLLBACK)
    async def rollback(self, request: HumanAction) -> RolloutProgress:
        """An operator (never the author) rolls back every affected wave (the saga)."""

        def apply() -> None:
            self._end_request = (_END_ROLLBACK, request)

        return await self._authorize_and_apply(Update.ROLLBACK, request, apply)

    @rollback.validator
    def _validate_rollback(self, request: HumanAction) -> None:
        self._validate(Update.ROLLBACK, request)

    @workflow.update(name=Update.PAUSE)
    async def pause(self, request: HumanAction) -> RolloutProgress:
        """An operator pauses: no new wave is assigned and nothing is promoted until resumed."""

        def apply() -> None:
            self._paused = True
            by = "the fleet safety net" if request.actor_id == policy.SYSTEM_ACTOR_ID else "an operator"
            self._message = f"Paused by {by}: {request.reason}"

        return await self._authorize_and_apply(Update.PAUSE, request, apply)

    @pause.validator
    def _validate_pause(self, request: HumanAction) -> None:
        self._validate(Update.PAUSE, request)

    @workflow.update(name=Update.RESUME)
    async def resume(self, request: HumanAction) -> RolloutProgress:
        """An operator resumes a paused rollout where it was."""

        def apply() -> None:
            self._paused = False
            self._message = f"Resumed by an operator: {request.reason}"

        return await self._authorize_and_apply(Update.RESUME, request, apply)

    @resume.validator
    def _validate_resume(self, request: HumanAction) -> None:
        self._validate(Update.RESUME, request)

    @workflow.query(name=Query.STATUS)
    def status(self) -> RolloutProgress:
        """Where the rollout stands: phase, wave, open gate, last health and verdict. The phase counts an accepted
        abort or rollback the main loop has not acted on yet, so an update's answer shows the state after it."""
        inp = self._inp
        index = min(self._wave_index, len(inp.waves) - 1) if inp.waves else 0
        return RolloutProgress(
            rollout_id=inp.rollout_id,
            phase=self._phase_for_validation(),
            wave_index=self._wave_index,
            wave_name=inp.waves[index].name if inp.waves else "",
            waves_total=len(inp.waves),
            paused=self._paused,
            gate=self._gate,
            last_health=self._last_health,
            last_verdict=self._last_verdict,
            message=self._message,
        )


def _failure_message(err: ActivityError) -> str:
    cause = err.cause
    return cause.message if isinstance(cause, ApplicationError) else str(cause or err)


def _auto_promotion_reason(wave: WavePlan, health: WaveHealth) -> str:
    return (
        f"Wave {wave.name} passed and was promoted automatically: {health.succeeded} of {health.total} devices "
        f"succeeded (needs {wave.success_threshold:.0%}), {health.failures} failed."
    )


def _progress(wave: WavePlan, health: WaveHealth, soak_done: bool) -> str:
    stage = "soak over, waiting for deadlines" if soak_done else "soaking"
    return (
        f"Wave {wave.name} {stage}: {health.succeeded} succeeded, {health.failures} failed, "
        f"{health.unfinished} unfinished of {health.total}."
    )


def _inconclusive_reason(wave: WavePlan, health: WaveHealth) -> str:
    signals = f" Health gates: {health.signal_reason}" if health.signal == SignalVerdict.INCONCLUSIVE else ""
    return (
        f"Wave {wave.name} is inconclusive at the end of its soak: {health.finished} of {health.total} devices "
        f"finished (minimum {wave.min_sample}), {health.succeeded} succeeded "
        f"(needs {wave.success_threshold:.0%}).{signals} Waiting for an operator to promote, abort or roll back."
    )


def _failure_reason(wave: WavePlan, health: WaveHealth) -> str:
    """Why a wave failed: its failure threshold, else (the verdict's other FAIL) a regression of its signals."""
    finished = health.finished
    crossed = finished > 0 and health.failures / finished >= wave.failure_threshold - 1e-9
    if health.signal == SignalVerdict.REGRESSION and not crossed:
        return f"Wave {wave.name} failed its health gates: {health.signal_reason}"
    return (
        f"Wave {wave.name} failed: {health.failures} of {health.finished} finished devices failed "
        f"(threshold {wave.failure_threshold:.0%})."
    )
