"""History stays small and independent of fleet size: continue-as-new per wave and mid-wave, counts not devices."""

from __future__ import annotations

import pytest

from tests.workflows.fakes import FakeFleet, counts, finishing
from tests.workflows.support import (
    fleet_worker,
    operator,
    rollout_input,
    run_histories,
    start,
    status,
    wait_for,
    wave,
)
from workflows.rollout import HISTORY_EVENT_BUDGET
from workflows.types import Gate, Phase, RolloutProgress, Update

pytestmark = pytest.mark.asyncio(loop_scope="session")

# Continue-as-new is checked once per tick, and a tick writes about ten events.
RUN_BOUND = HISTORY_EVENT_BUDGET + 25


async def run_to_end(env, fleet: FakeFleet, inp) -> tuple[RolloutProgress, list[int]]:
    async with fleet_worker(env.client, fleet) as task_queue:
        handle = await start(env.client, inp, task_queue)
        result = await handle.result()
    return result, [len(history.events) for history in await run_histories(env.client, handle)]


async def test_a_long_soak_continues_as_new_and_every_run_stays_small(time_env):
    # 450 checks one minute apart: far more history than one run may hold.
    fleet = FakeFleet(waves=[finishing(50, ticks=400)])
    result, events = await run_to_end(time_env, fleet, rollout_input([wave("fleet", soak=450 * 60)], interval=60))

    print("long soak: events per run", events)
    assert result.phase == Phase.COMPLETED
    assert len(events) >= 3 and max(events) <= RUN_BOUND
    # No check was lost or repeated across the runs, and the wave was assigned once.
    assert fleet.health_checks == {0: 451}
    assert fleet.assign_calls == {0: 1}


async def test_an_open_gate_and_a_pause_survive_continue_as_new(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=1), finishing(10, ticks=1)])
    plan = [wave("pilot", soak=60, promotion="manual"), wave("fleet", soak=60)]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        await wait_for(time_env, handle, lambda s: s.gate == Gate.PROMOTION)
        await handle.execute_update(Update.PAUSE, operator(), result_type=RolloutProgress)
        await time_env.sleep(5 * 3600)  # monitoring at the gate goes on: ~300 checks, more than one run holds
        assert len(await run_histories(time_env.client, handle)) >= 2
        carried = await status(handle)  # the started handle addresses the latest run
        assert (carried.phase, carried.gate, carried.paused, carried.wave_index) == (
            Phase.PAUSED,
            Gate.PROMOTION,
            True,
            0,
        )

        await handle.execute_update(Update.RESUME, operator(), result_type=RolloutProgress)
        await handle.execute_update(Update.PROMOTE, operator(wave_index=0), result_type=RolloutProgress)
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert fleet.assign_calls == {0: 1, 1: 1}


async def test_history_does_not_grow_with_the_number_of_devices(time_env):
    def fleet_of(scale: int) -> FakeFleet:
        return FakeFleet(waves=[finishing(n * scale, ticks=6) for n in (1, 10, 89)])

    plan = [wave("pilot", soak=900), wave("early", soak=900), wave("fleet", soak=900)]
    small_result, small = await run_to_end(time_env, fleet_of(10), rollout_input(plan))
    large_result, large = await run_to_end(time_env, fleet_of(1000), rollout_input(plan))

    print("1,000 devices:", small, "100,000 devices:", large)
    assert small_result.phase == large_result.phase == Phase.COMPLETED
    assert small == large


async def test_a_100k_device_rollout_in_5_waves_stays_within_a_few_thousand_events(time_env):
    sizes = [50, 1_000, 9_000, 30_000, 59_950]
    fleet = FakeFleet(waves=[finishing(n, ticks=40, failure_rate=0.001) for n in sizes])
    plan = [wave(f"wave-{i}", soak=3600, min_sample=20, success=0.98, failure=0.02) for i in range(5)]
    result, events = await run_to_end(time_env, fleet, rollout_input(plan, interval=60))

    print("100k devices, 5 waves: events per run", events, "total", sum(events))
    assert result.phase == Phase.COMPLETED
    assert sum(fleet.deployments.values()) == 100_000
    assert len(events) == 5 and max(events) < 1_000 and sum(events) < 4_000


async def test_a_long_rollback_continues_as_new_and_still_ends_rolled_back(time_env):
    fleet = FakeFleet(
        waves=[[counts(100, failed=20)]],
        rollback_script=[counts(80)] * 300 + [counts(80, succeeded=80)],
    )
    result, events = await run_to_end(time_env, fleet, rollout_input([wave("pilot", min_sample=10)], interval=60))

    print("long rollback: events per run", events)
    assert result.phase == Phase.ROLLED_BACK
    assert len(events) >= 2 and max(events) <= RUN_BOUND
    assert fleet.rollback_checks == 301 and len(fleet.halts) == 1
    assert [f.outcome for f in fleet.finishes] == [Phase.ROLLED_BACK]
    # The saga's assignment is asked again by each run (idempotent) and never per device.
    assert fleet.names().count("rollouts.rollback_assign") == len(events)
