"""Stand-ins for RolloutWorkflow and its authorize activity (Django-free: the workflow sandbox imports this module).

`StandInRolloutWorkflow` registers under the real workflow name with the real update and query names, so the
client helpers talk to it exactly as they talk to RolloutWorkflow. It waits (a durable timer) for `abort`.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from workflows.search_attributes import progress_updates
    from workflows.types import WORKFLOW_NAME, HumanAction, Phase, Query, RolloutInput, RolloutProgress, Update

AUTHORIZE_ACTIVITY = "tests.standin_authorize"


@activity.defn(name=AUTHORIZE_ACTIVITY)
def standin_authorize(action: HumanAction) -> None:
    """Refuses the way a real activity does after the database said no (a DomainError became this)."""
    if action.reason == "db-says-no":
        raise ApplicationError("Olga's operator role was revoked.", type="NotPermitted", non_retryable=True)


@workflow.defn(name=WORKFLOW_NAME)
class StandInRolloutWorkflow:
    """Waits up to an hour for abort; pause/promote exercise validator and activity refusals."""

    @workflow.init
    def __init__(self, input: RolloutInput) -> None:
        # Set here, not in run(): an update may arrive in the first activation, before run() starts.
        self._input = input
        self._phase = Phase.RUNNING
        self._paused = False
        self._message = ""

    @workflow.run
    async def run(self, input: RolloutInput) -> str:
        workflow.upsert_search_attributes(progress_updates(phase=self._phase, wave=0, paused=False))
        await workflow.wait_condition(lambda: self._phase == Phase.ABORTED, timeout=timedelta(hours=1))
        return self._phase

    @workflow.update(name=Update.PROMOTE)
    async def promote(self, action: HumanAction) -> RolloutProgress:
        await workflow.execute_activity(AUTHORIZE_ACTIVITY, action, start_to_close_timeout=timedelta(seconds=10))
        self._message = f"promoted wave {action.wave_index}"
        return self.status()

    @promote.validator
    def _validate_promote(self, action: HumanAction) -> None:
        if "operator" not in action.actor_roles:
            raise ApplicationError("Only an operator may promote a rollout.", type="NotPermitted")
        if action.wave_index != 0:
            raise ApplicationError(
                f"Wave 1 (wave_index 0) is waiting for promotion, not wave {action.wave_index + 1} (wave_index {action.wave_index}).",
                type="Conflict",
            )

    @workflow.update(name=Update.PAUSE)
    async def pause(self, action: HumanAction) -> RolloutProgress:
        self._paused = True
        workflow.upsert_search_attributes(progress_updates(phase=Phase.PAUSED, wave=0, paused=True))
        return self.status()

    @pause.validator
    def _validate_pause(self, action: HumanAction) -> None:
        if self._paused:
            raise ValueError("Only a running rollout or one awaiting promotion can be paused; this one is paused.")

    @workflow.update(name=Update.ABORT)
    async def abort(self, action: HumanAction) -> RolloutProgress:
        self._phase = Phase.ABORTED
        return self.status()

    @workflow.query(name=Query.STATUS)
    def status(self) -> RolloutProgress:
        return RolloutProgress(
            rollout_id=self._input.rollout_id,
            phase=Phase.PAUSED if self._paused and self._phase == Phase.RUNNING else self._phase,
            wave_index=0,
            wave_name=self._input.waves[0].name if self._input.waves else "",
            waves_total=len(self._input.waves),
            paused=self._paused,
            gate="",
            message=self._message,
        )
