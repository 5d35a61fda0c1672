"""ChangeWorkflow: one durable workflow per submitted change request (id `change-<pk>`) that keeps its timers.

The database stays the truth: the workflow only knows when the next step is due and asks the database to take
it. Each round it waits until the earliest due time the database reported (`ChangeState.next_due_at`) or until a
service signals that a decision committed (`changed`), whichever comes first; then it runs CHANGE_FIRE (the timer
fired) or CHANGE_SYNC (a decision changed the dates). CHANGE_FIRE re-reads the change and does only what is due by
the Temporal server's clock — review reminders, the escalation at the review deadline, the lapse of an expired
approval, the scheduled start (or its hold when the pre-flight refuses) — each recorded once (step keys). A signal
carries no authority: a forged one costs one read.

Django-free by rule (the sandbox stays on); deterministic by rule: `workflow.now()`, durable timers through
`workflow.wait_condition(..., timeout=...)`. History stays small: one timer and one activity per round, and the run
continues as new when the server suggests it or the history passes HISTORY_EVENT_BUDGET. The workflow ends once
the change is closed (rejected, cancelled, completed, rolled back): nothing more is owed then.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from workflows.change_types import (
        CHANGE_WORKFLOW_NAME,
        ChangeActivity,
        ChangeInput,
        ChangeNudge,
        ChangeQuery,
        ChangeRef,
        ChangeSignal,
        ChangeState,
    )
    from workflows.search_attributes import OTA_CHANGE_STATUS, change_search_attribute_updates

HISTORY_EVENT_BUDGET = 1000
# How long to wait before asking again for a step the database did not take when its timer fired.
RETRY_DUE_SECONDS = 30.0

# Infrastructure errors are retried without end (the database may be down for a while); domain errors are not.
_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(minutes=1),
    non_retryable_error_types=["DomainError", "NotPermitted", "Conflict", "InvalidInput"],
)
# The scheduled start signs the release and creates the rollout's waves: give it room.
_STEP_TIMEOUT = timedelta(minutes=5)


@workflow.defn(name=CHANGE_WORKFLOW_NAME)
class ChangeWorkflow:
    """Keep one change's timers: review reminders and escalation, approval expiry and the scheduled start."""

    @workflow.init
    def __init__(self, inp: ChangeInput) -> None:
        self._input = inp
        self._state = ChangeState(change_id=inp.change_id, status="")
        self._nudged = False
        self._attributes: tuple[str, ...] = ()

    @workflow.signal(name=ChangeSignal.CHANGED)
    def changed(self, nudge: ChangeNudge) -> None:
        """A decision on the change committed: re-read it (the payload is not trusted)."""
        self._nudged = True

    @workflow.query(name=ChangeQuery.STATE)
    def state(self) -> ChangeState:
        return self._state

    @workflow.run
    async def run(self, inp: ChangeInput) -> ChangeState:
        self._state = await self._step(ChangeActivity.CHANGE_SYNC, "")
        fired_for = ""
        while True:
            self._show(self._state)
            if self._state.closed:
                return self._state
            info = workflow.info()
            if info.is_continue_as_new_suggested() or info.get_current_history_length() > HISTORY_EVENT_BUDGET:
                workflow.continue_as_new(ChangeInput(change_id=inp.change_id))
            due_at = self._state.next_due_at
            timeout = self._seconds_until(due_at) if due_at else None
            if timeout is not None and due_at == fired_for:
                # The database still owes the step it was just asked to take (e.g. its clock is behind the
                # server's): ask again a little later instead of spinning.
                timeout = max(timeout, RETRY_DUE_SECONDS)
            if timeout is not None and timeout <= 0:
                fired_for = due_at
                self._state = await self._step(ChangeActivity.CHANGE_FIRE, due_at)
                continue
            if await self._wait(timeout):
                fired_for = ""
                self._state = await self._step(ChangeActivity.CHANGE_SYNC, "")
            else:
                fired_for = due_at
                self._state = await self._step(ChangeActivity.CHANGE_FIRE, due_at)

    async def _wait(self, timeout: float | None) -> bool:
        """True when a signal arrived, False when the timer fired."""
        try:
            await workflow.wait_condition(
                lambda: self._nudged, timeout=timedelta(seconds=timeout) if timeout is not None else None
            )
        except TimeoutError:
            return False
        return True

    def _seconds_until(self, when: str) -> float:
        return (datetime.fromisoformat(when) - workflow.now()).total_seconds()

    async def _step(self, activity_name: str, due_at: str) -> ChangeState:
        # Cleared before the read: a decision that commits while the activity runs signals again, and the next
        # wait returns at once to read it.
        self._nudged = False
        result: ChangeState = await workflow.execute_activity(
            activity_name,
            ChangeRef(change_id=self._input.change_id, due_at=due_at),
            result_type=ChangeState,
            start_to_close_timeout=_STEP_TIMEOUT,
            retry_policy=_RETRY,
        )
        return result

    def _show(self, state: ChangeState) -> None:
        """Upsert the search attributes when what they show changed (no event when nothing did)."""
        shown = (
            state.status,
            state.risk_level,
            state.change_type,
            state.review_due_at,
            state.approval_expires_at,
            state.scheduled_start,
        )
        if shown == self._attributes or not state.status:
            return
        # Only for workflows started with the change search attributes (so the namespace has them registered: the
        # services and the reconcile loop start them so; a test server without them still runs the timers).
        if OTA_CHANGE_STATUS not in workflow.info().typed_search_attributes:  # type: ignore[comparison-overlap]  # __contains__ takes a key
            return
        self._attributes = shown
        workflow.upsert_search_attributes(
            change_search_attribute_updates(
                change_id=state.change_id,
                status=state.status,
                risk_level=state.risk_level,
                change_type=state.change_type,
                review_due_at=state.review_due_at,
                approval_expires_at=state.approval_expires_at,
                scheduled_start=state.scheduled_start,
            )
        )
