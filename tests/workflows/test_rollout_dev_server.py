"""RolloutWorkflow on the real dev server, in real time (second-long soaks): worker restarts and human updates."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.worker import Replayer

from tests.workflows.fakes import FakeFleet, finishing
from tests.workflows.support import (
    AUTHOR_ID,
    OPERATOR_ID,
    fleet_worker,
    operator,
    rollout_input,
    run_histories,
    start,
    wait_for,
    wave,
)
from workflows.rollout import RolloutWorkflow
from workflows.types import Gate, HumanAction, Phase, RolloutProgress, Update

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def until(condition, *, seconds: float = 20) -> None:
    for _ in range(int(seconds / 0.05)):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition never held")


async def test_a_worker_restart_mid_wave_neither_loses_nor_duplicates_deployments(dev_env):
    fleet = FakeFleet(waves=[finishing(40, ticks=3), finishing(400, ticks=2)])
    plan = [wave("pilot", soak=3), wave("fleet", soak=2)]
    inp = rollout_input(plan, interval=1)

    # A crashed worker's sticky queue is abandoned after this timeout; keep it short so the test is quick.
    sticky = timedelta(seconds=1)
    async with fleet_worker(
        dev_env.client, fleet, keep_running=True, sticky_queue_schedule_to_start_timeout=sticky
    ) as task_queue:
        handle = await start(dev_env.client, inp, task_queue)
        await until(lambda: fleet.health_checks.get(0, 0) >= 2)
    # The worker is gone mid-wave; timers keep firing on the server with nobody to run the workflow.
    await asyncio.sleep(1.5)
    assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING
    checks_before_restart = fleet.health_checks[0]

    # A new worker with no cached state replays the history on every task and carries on.
    async with fleet_worker(dev_env.client, fleet, max_cached_workflows=0, task_queue=task_queue):
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert fleet.assign_calls == {0: 1, 1: 1}
    assert fleet.deployments == {0: 40, 1: 400}
    assert fleet.health_checks[0] > checks_before_restart
    # The live histories replay under the current code as well.
    for history in await run_histories(dev_env.client, handle):
        await Replayer(workflows=[RolloutWorkflow]).replay_workflow(history)


async def test_a_manual_gate_refuses_the_author_and_opens_for_an_operator(dev_env):
    fleet = FakeFleet(waves=[finishing(5, ticks=1), finishing(50, ticks=1)])
    plan = [wave("pilot", soak=1, promotion="manual"), wave("fleet", soak=1)]
    async with fleet_worker(dev_env.client, fleet) as task_queue:
        handle = await start(dev_env.client, rollout_input(plan, interval=1), task_queue)
        await wait_for(dev_env, handle, lambda s: s.gate == Gate.PROMOTION, step_seconds=0.2, attempts=100)

        author = HumanAction(actor_id=AUTHOR_ID, actor_roles=["operator"], reason="ship it", wave_index=0)
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(Update.PROMOTE, author, result_type=RolloutProgress)
        assert fleet.decisions == [] and 1 not in fleet.assign_calls

        promoted = await handle.execute_update(Update.PROMOTE, operator(wave_index=0), result_type=RolloutProgress)
        assert promoted.gate == Gate.NONE
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert [(d.action, d.actor_id) for d in fleet.decisions] == [(Update.PROMOTE, OPERATOR_ID)]
