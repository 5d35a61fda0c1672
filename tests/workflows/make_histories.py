"""Record the committed workflow histories that tests/workflows/test_replay.py replays.

Run from the repository root (no database, no running server needed; it starts the time-skipping test server):

    .venv/bin/python -m tests.workflows.make_histories            # (re)record every current scenario
    .venv/bin/python -m tests.workflows.make_histories NAME ...   # only these scenarios

Each run of a scenario becomes `histories/<scenario>.run<N>.json` (the JSON of `temporal workflow show
--output json`). Record new scenarios after changing the workflow, and keep the old files: they are what
workflows still running in production look like. Files whose scenario is in FROZEN were recorded with an
older version of the workflow (before a `workflow.patched` change) and are never rewritten by this script.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment

from tests.workflows.fakes import FakeFleet, counts, finishing
from tests.workflows.support import (
    AUTHOR_ID,
    TEST_SERVER,
    fleet_worker,
    operator,
    rollout_input,
    run_histories,
    start,
    wait_for,
    wave,
)
from workflows.types import Gate, HumanAction, Phase, RolloutProgress, Update

HISTORIES = Path(__file__).parent / "histories"
# Recorded with the workflow as it was before its `workflow.patched` changes (MONITOR_CLAMP_PATCH: soak 150 s with
# checks every 60 s, the last check came at 180 s where the patched workflow checks at 150 s;
# AUTO_PROMOTION_RECORD_PATCH: no projection of the automatic promotion). Replaying it proves old runs still replay.
FROZEN = {"v1_before_patches"}

Scenario = Callable[[WorkflowEnvironment, Client, str], Awaitable[WorkflowHandle]]
FAILING = [counts(100, succeeded=4), counts(100, succeeded=6, failed=2), counts(100, succeeded=9, failed=3)]


async def _update(handle: WorkflowHandle, name: str, action: HumanAction) -> None:
    await handle.execute_update(name, action, result_type=RolloutProgress)


async def healthy_3_waves(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    plan = [wave("pilot", soak=300), wave("early", soak=300), wave("fleet", soak=300)]
    return await start(client, rollout_input(plan), task_queue)


async def v1_before_patches(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    return await start(client, rollout_input([wave("pilot", soak=150)], interval=60), task_queue)


async def soak_clamp(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    return await start(client, rollout_input([wave("pilot", soak=150)], interval=60), task_queue)


async def manual_gate_promote(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    handle = await start(
        client, rollout_input([wave("pilot", soak=120, promotion="manual"), wave("fleet")]), task_queue
    )
    await wait_for(env, handle, lambda s: s.gate == Gate.PROMOTION)
    try:  # refused by the validator: leaves no trace in the history
        await _update(handle, Update.PROMOTE, HumanAction(AUTHOR_ID, ["operator"], "mine", 0))
    except Exception:  # noqa: BLE001
        pass
    await _update(handle, Update.PROMOTE, operator(wave_index=0))
    return handle


async def fail_halt_and_rollback(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    plan = [wave("pilot", soak=60), wave("fleet", min_sample=10, failure=0.2)]
    return await start(client, rollout_input(plan, abort_policy="halt_and_rollback"), task_queue)


async def fail_halt_then_abort(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    plan = [wave("pilot", soak=60), wave("fleet", min_sample=10, failure=0.2)]
    handle = await start(client, rollout_input(plan, abort_policy="halt"), task_queue)
    await wait_for(env, handle, lambda s: s.gate == Gate.HALTED)
    await _update(handle, Update.ABORT, operator(reason="bad batch"))
    return handle


async def inconclusive_then_promote(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    plan = [wave("pilot", soak=120, min_sample=10), wave("fleet", soak=60)]
    handle = await start(client, rollout_input(plan), task_queue)
    await wait_for(env, handle, lambda s: s.gate == Gate.INCONCLUSIVE)
    await _update(handle, Update.PROMOTE, operator(wave_index=0))
    return handle


async def pause_resume_rollback(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    plan = [wave("pilot", soak=120), wave("fleet", soak=600)]
    handle = await start(client, rollout_input(plan), task_queue)
    await wait_for(env, handle, lambda s: s.phase == Phase.RUNNING, step_seconds=1)
    await _update(handle, Update.PAUSE, operator())
    await env.sleep(600)
    await _update(handle, Update.RESUME, operator())
    await wait_for(env, handle, lambda s: s.wave_index == 1 and s.last_health is not None)
    await _update(handle, Update.ROLLBACK, operator(reason="complaints"))
    return handle


async def resumed_mid_wave_at_gate(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    """What a run continued as new while paused at a promotion gate starts from (cheaper than 2,000 events)."""
    soak_started = (await env.get_current_time()) - timedelta(hours=3)
    plan = [wave("pilot", soak=60), wave("early", soak=600, promotion="manual"), wave("fleet", soak=60)]
    carried = rollout_input(
        plan,
        start_wave=1,
        wave_assigned=True,
        wave_soak_started_at=soak_started.isoformat(),
        paused=True,
        gate=Gate.PROMOTION,
    )
    handle = await start(client, carried, task_queue)
    await env.sleep(300)
    await _update(handle, Update.RESUME, operator())
    await _update(handle, Update.PROMOTE, operator(wave_index=1))
    return handle


async def resumed_rollback(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    """What a run continued as new in the middle of the rollback saga starts from."""
    carried = rollout_input(
        [wave("pilot"), wave("fleet")],
        start_wave=1,
        wave_assigned=True,
        wave_soak_started_at=(await env.get_current_time()).isoformat(),
        rolling_back=True,
        rollback_reason="Wave fleet failed",
    )
    return await start(client, carried, task_queue)


async def human_actions_by_update_id(env: WorkflowEnvironment, client: Client, task_queue: str) -> WorkflowHandle:
    """Pause, resume and promote at a manual gate, each authorised under its update's id (the decision's step key)."""
    handle = await start(
        client, rollout_input([wave("pilot", soak=120, promotion="manual"), wave("fleet")]), task_queue
    )
    await wait_for(env, handle, lambda s: s.gate == Gate.PROMOTION)
    for update_id, name, action in [
        ("pause-1", Update.PAUSE, operator()),
        ("resume-1", Update.RESUME, operator()),
        ("promote-1", Update.PROMOTE, operator(wave_index=0)),
    ]:
        await handle.execute_update(name, action, id=update_id, result_type=RolloutProgress)
    return handle


SCENARIOS: dict[str, tuple[Scenario, Callable[[], FakeFleet]]] = {
    "healthy_3_waves": (healthy_3_waves, lambda: FakeFleet([finishing(10, ticks=2)] * 3)),
    "v1_before_patches": (v1_before_patches, lambda: FakeFleet([finishing(10, ticks=2)])),
    "soak_clamp": (soak_clamp, lambda: FakeFleet([finishing(10, ticks=2)])),
    "manual_gate_promote": (manual_gate_promote, lambda: FakeFleet([finishing(5, ticks=1), finishing(50, ticks=2)])),
    "fail_halt_and_rollback": (fail_halt_and_rollback, lambda: FakeFleet([finishing(10, ticks=1), FAILING])),
    "fail_halt_then_abort": (fail_halt_then_abort, lambda: FakeFleet([finishing(10, ticks=1), FAILING])),
    "inconclusive_then_promote": (
        inconclusive_then_promote,
        lambda: FakeFleet([[counts(100, succeeded=5)], finishing(10, ticks=1)]),
    ),
    "pause_resume_rollback": (
        pause_resume_rollback,
        lambda: FakeFleet(
            [finishing(10, ticks=1), finishing(100, ticks=30)],
            rollback_script=[counts(10)] * 3 + [counts(10, succeeded=10)],
        ),
    ),
    "resumed_mid_wave_at_gate": (
        resumed_mid_wave_at_gate,
        lambda: FakeFleet(
            [finishing(10, ticks=1), finishing(100, ticks=1), finishing(1000, ticks=1)], deployments={1: 100}
        ),
    ),
    "human_actions_by_update_id": (
        human_actions_by_update_id,
        lambda: FakeFleet([finishing(5, ticks=1), finishing(50, ticks=2)]),
    ),
    "resumed_rollback": (
        resumed_rollback,
        lambda: FakeFleet(
            [finishing(10, ticks=1), finishing(100, ticks=1)], rollback_script=[counts(50), counts(50, succeeded=50)]
        ),
    ),
}


async def record(names: list[str]) -> None:
    HISTORIES.mkdir(exist_ok=True)
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=TEST_SERVER)
    try:
        for name in names:
            if name in FROZEN and any(HISTORIES.glob(f"{name}.run*.json")):
                print(f"{name}: frozen, kept", flush=True)
                continue
            scenario, make_fleet = SCENARIOS[name]
            async with fleet_worker(env.client, make_fleet()) as task_queue:
                handle = await scenario(env, env.client, task_queue)
                result = await handle.result()
            for stale in HISTORIES.glob(f"{name}.run*.json"):
                stale.unlink()
            histories = await run_histories(env.client, handle)
            for number, history in enumerate(histories, start=1):
                (HISTORIES / f"{name}.run{number}.json").write_text(history.to_json() + "\n")
            print(f"{name}: {result.phase}, events per run {[len(h.events) for h in histories]}", flush=True)
    finally:
        await env.shutdown()


def main() -> None:
    names = sys.argv[1:] or list(SCENARIOS)
    unknown = set(names) - set(SCENARIOS)
    if unknown:
        sys.exit(f"unknown scenarios: {', '.join(sorted(unknown))}")
    asyncio.run(record(names))
    # The Temporal core can crash at interpreter exit in short-lived processes (sdk-python#300).
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
