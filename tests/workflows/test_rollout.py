"""RolloutWorkflow on the time-skipping test server, over a scripted fake fleet (no database).

Timers dominate these scenarios (soaks of ten minutes, checks every minute), so the test server skips the
waiting; every test still runs the real workflow code in the sandbox, with the real activity names.
"""

from __future__ import annotations

import asyncio

import pytest
from temporalio.client import WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError

from tests.workflows.fakes import FakeFleet, counts, finishing
from tests.workflows.support import (
    AUTHOR_ID,
    CAB_MEMBER_ID,
    OPERATOR_ID,
    OTHER_OPERATOR_ID,
    fleet_worker,
    operator,
    rollout_input,
    run_histories,
    start,
    status,
    wait_for,
    wave,
)
from workflows.types import Activity, Gate, HumanAction, Phase, RolloutProgress, Update, Verdict

pytestmark = pytest.mark.asyncio(loop_scope="session")

# min_sample 10, failure threshold 20%: healthy until the third check, which crosses the threshold.
FAILING_WAVE = [
    counts(100, succeeded=4),  # 4 finished: below the sample
    counts(100, succeeded=6, failed=2),  # 8 finished, 25% failed, still below the sample: no verdict yet
    counts(100, succeeded=9, failed=3),  # 12 finished >= 10, 25% >= 20%: FAIL on this very check
    counts(100, succeeded=9, failed=30),
]


async def update(handle, name: str, action: HumanAction) -> RolloutProgress:
    return await handle.execute_update(name, action, result_type=RolloutProgress)


async def refused(handle, name: str, action: HumanAction) -> str:
    """Send an update that must be refused; return the refusal's message."""
    with pytest.raises(WorkflowUpdateFailedError) as failure:
        await handle.execute_update(name, action)
    # The validator's refusal is the cause; the database's (the authorize activity's) is one level further down.
    cause: BaseException | None = failure.value.cause
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__
    assert isinstance(cause, ApplicationError)
    return cause.message


def calls_after(fleet: FakeFleet, name: str, argument: object) -> list[str]:
    index = fleet.calls.index((name, argument))
    return [call for call, _ in fleet.calls[index + 1 :]]


async def test_a_healthy_three_wave_rollout_completes_every_wave(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=3), finishing(200, ticks=5), finishing(5000, ticks=8)])
    inp = rollout_input([wave("pilot"), wave("early"), wave("fleet")])
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, inp, task_queue)
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert [f.outcome for f in fleet.finishes] == [Phase.COMPLETED]
    assert fleet.assign_calls == {0: 1, 1: 1, 2: 1}
    assert fleet.deployments == {0: 10, 1: 200, 2: 5000}
    # Each wave is judged at the end of its 600 s soak (checks every 60 s: 11 checks) before the next one starts.
    assert fleet.health_checks == {0: 11, 1: 11, 2: 11}
    assert calls_after(fleet, Activity.WAVE_HEALTH, (0, 11))[:4] == [
        Activity.WAVE_PROMOTE,  # the automatic promotion, re-checked and recorded by the database
        Activity.ROLLOUT_PHASE,  # the next run projects its state first (idempotent)
        Activity.WAVE_WINDOW_WAIT,
        Activity.WAVE_ASSIGN,
    ]
    assert fleet.promotions == [0, 1, 2]
    assert fleet.halts == [] and fleet.decisions == []
    # Each run projects where it starts, then the opened wave.
    assert [(p.phase, p.wave_index) for p in fleet.phases] == [(Phase.SCHEDULED, 0), (Phase.RUNNING, 0)] + [
        (Phase.RUNNING, 1),
        (Phase.RUNNING, 1),
        (Phase.RUNNING, 2),
        (Phase.RUNNING, 2),
    ]
    # One run per wave: the run continues as new after each promoted wave.
    assert len(await run_histories(time_env.client, handle)) == 3


async def test_the_failure_threshold_halts_within_one_tick_and_rolls_back(time_env):
    fleet = FakeFleet(
        waves=[finishing(10, ticks=2), FAILING_WAVE, finishing(1000, ticks=2)],
        rollback_script=[counts(20), counts(20, succeeded=12), counts(20, succeeded=19, failed=1)],
    )
    plan = [wave("pilot"), wave("early", min_sample=10, failure=0.2), wave("fleet")]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan, abort_policy="halt_and_rollback"), task_queue)
        result = await handle.result()

    # Halted on the very check that crossed the threshold after the minimum sample: the third one.
    assert fleet.health_checks[1] == 3
    assert calls_after(fleet, Activity.WAVE_HEALTH, (1, 3)) == [
        Activity.ROLLOUT_HALT,
        Activity.ROLLOUT_PHASE,  # rolling_back
        Activity.ROLLBACK_ASSIGN,
        Activity.ROLLBACK_HEALTH,
        Activity.ROLLBACK_HEALTH,
        Activity.ROLLBACK_HEALTH,  # nothing unfinished: the saga is over
        Activity.ROLLOUT_FINISH,
    ]
    assert [h.wave_index for h in fleet.halts] == [1]
    assert 2 not in fleet.assign_calls
    assert result.phase == Phase.ROLLED_BACK
    assert result.last_health == counts(20, succeeded=19, failed=1)
    (finish,) = fleet.finishes
    assert finish.outcome == Phase.ROLLED_BACK and finish.actor_id is None
    assert "19 of 20 devices restored, 1 failed" in finish.reason and "Wave early failed" in finish.reason


async def test_the_halt_policy_holds_at_the_halted_gate_until_an_operator_aborts(time_env):
    fleet = FakeFleet(waves=[FAILING_WAVE, finishing(10, ticks=1)])
    plan = [wave("pilot", min_sample=10, failure=0.2), wave("fleet")]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan, abort_policy="halt"), task_queue)
        halted = await wait_for(time_env, handle, lambda s: s.gate == Gate.HALTED)
        assert (halted.phase, halted.wave_index, halted.last_verdict) == (Phase.HALTED, 0, Verdict.FAIL)
        assert fleet.health_checks[0] == 3 and len(fleet.halts) == 1

        # Hours pass: nothing is promoted, rolled back or even checked; promote and pause are refused.
        await time_env.sleep(6 * 3600)
        assert await refused(handle, Update.PROMOTE, operator(wave_index=0)) == "No wave is waiting for promotion."
        assert "can be paused" in await refused(handle, Update.PAUSE, operator())
        assert (await status(handle)).gate == Gate.HALTED
        assert fleet.health_checks[0] == 3 and fleet.rollback_checks == 0 and fleet.finishes == []

        aborted = await update(handle, Update.ABORT, operator(reason="bad batch of modems"))
        result = await handle.result()

    assert aborted.rollout_id == result.rollout_id
    assert aborted.phase == result.phase == Phase.ABORTED
    assert len(fleet.halts) == 1  # already halted: the abort does not halt twice
    assert [(d.action, d.actor_id, d.reason) for d in fleet.decisions] == [
        (Update.ABORT, OPERATOR_ID, "bad batch of modems")
    ]
    (finish,) = fleet.finishes
    assert (finish.outcome, finish.actor_id, finish.reason) == (Phase.ABORTED, OPERATOR_ID, "bad batch of modems")
    assert 1 not in fleet.assign_calls


async def test_the_halt_policy_rolls_back_when_an_operator_asks(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=1), FAILING_WAVE])
    plan = [wave("pilot"), wave("fleet", min_sample=10, failure=0.2)]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan, abort_policy="halt"), task_queue)
        await wait_for(time_env, handle, lambda s: s.gate == Gate.HALTED)
        rolling = await update(handle, Update.ROLLBACK, operator(reason="restore the fleet"))
        assert rolling.phase == Phase.ROLLING_BACK  # the answer shows the state after the action
        result = await handle.result()

    assert result.phase == Phase.ROLLED_BACK
    assert fleet.rollback_offered == 10 + 9  # every device of both waves that took the new release
    (finish,) = fleet.finishes
    assert (finish.outcome, finish.actor_id) == (Phase.ROLLED_BACK, OPERATOR_ID)
    assert "restore the fleet" in finish.reason


async def test_an_inconclusive_wave_holds_and_is_never_promoted_by_itself(time_env):
    too_few = counts(100, succeeded=5)  # 5 of a minimum sample of 10 finished by the end of the soak
    fleet = FakeFleet(waves=[[too_few] * 11 + [counts(100, succeeded=100)], finishing(10, ticks=1)])
    plan = [wave("pilot", min_sample=10), wave("fleet")]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        held = await wait_for(time_env, handle, lambda s: s.gate == Gate.INCONCLUSIVE)
        assert (held.phase, held.last_verdict, held.wave_index) == (Phase.AWAITING_PROMOTION, Verdict.INCONCLUSIVE, 0)
        assert "5 of 100 devices finished (minimum 10)" in held.message

        # Later every device succeeds; the workflow keeps watching but still does not promote on its own.
        await time_env.sleep(2 * 3600)
        later = await status(handle)
        assert later.gate == Gate.INCONCLUSIVE and later.last_health == counts(100, succeeded=100)
        assert fleet.health_checks[0] > 11 and 1 not in fleet.assign_calls

        await update(handle, Update.PROMOTE, operator(wave_index=0, reason="late reports all good"))
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert fleet.assign_calls == {0: 1, 1: 1}
    assert [(d.action, d.wave_index) for d in fleet.decisions] == [(Update.PROMOTE, 0)]
    assert (Phase.AWAITING_PROMOTION, Gate.INCONCLUSIVE, 0) in [(p.phase, p.gate, p.wave_index) for p in fleet.phases]


async def test_a_manual_gate_blocks_until_a_permitted_operator_promotes(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=2), finishing(100, ticks=2)], refuse_actor_ids={OTHER_OPERATOR_ID})
    plan = [wave("pilot", promotion="manual"), wave("fleet")]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        gated = await wait_for(time_env, handle, lambda s: s.gate == Gate.PROMOTION)
        assert (gated.phase, gated.wave_index, gated.last_verdict) == (Phase.AWAITING_PROMOTION, 0, Verdict.PASS)
        await time_env.sleep(2 * 3600)
        assert 1 not in fleet.assign_calls

        # Refused at once by the validator: nothing reaches the database, nothing changes.
        author = HumanAction(actor_id=AUTHOR_ID, actor_roles=["operator"], reason="mine", wave_index=0)
        assert "author of the change" in await refused(handle, Update.PROMOTE, author)
        cab = HumanAction(actor_id=CAB_MEMBER_ID, actor_roles=["cab_member"], reason="lgtm", wave_index=0)
        assert await refused(handle, Update.PROMOTE, cab) == "Only an operator may promote a rollout."
        wrong_wave = operator(wave_index=1)
        assert await refused(handle, Update.PROMOTE, wrong_wave) == (
            "Wave 1 (wave_index 0) is waiting for promotion, not wave 2 (wave_index 1)."
        )
        assert Activity.HUMAN_ACTION_AUTHORIZE not in fleet.names()
        # Refused by the database (the authorize activity): the update fails, the gate stays.
        assert "may not act" in await refused(handle, Update.PROMOTE, operator(OTHER_OPERATOR_ID, wave_index=0))
        unchanged = await status(handle)
        assert (unchanged.phase, unchanged.gate, unchanged.wave_index) == (gated.phase, gated.gate, gated.wave_index)
        assert fleet.decisions == [] and 1 not in fleet.assign_calls

        promoted = await update(handle, Update.PROMOTE, operator(wave_index=0, reason="pilot looks good"))
        assert (promoted.phase, promoted.gate) == (Phase.RUNNING, Gate.NONE)
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert [(d.action, d.actor_id, d.reason, d.wave_index) for d in fleet.decisions] == [
        (Update.PROMOTE, OPERATOR_ID, "pilot looks good", 0)
    ]
    assert fleet.assign_calls == {0: 1, 1: 1}


async def test_pause_stops_the_next_assignment_and_resume_continues(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=2), finishing(100, ticks=2)])
    plan = [wave("pilot"), wave("fleet")]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        await wait_for(time_env, handle, lambda s: s.phase == Phase.RUNNING, step_seconds=1)
        paused = await update(handle, Update.PAUSE, operator(reason="fleet ops freeze"))
        assert (paused.phase, paused.paused) == (Phase.PAUSED, True)
        assert "can be paused" in await refused(handle, Update.PAUSE, operator())

        # The pilot passes during the pause (it is still monitored) but the next wave is not started.
        await time_env.sleep(3600)
        held = await status(handle)
        assert (held.phase, held.wave_index, held.last_verdict) == (Phase.PAUSED, 0, Verdict.PASS)
        assert fleet.health_checks[0] >= 11 and 1 not in fleet.assign_calls
        assert await refused(handle, Update.PROMOTE, operator(wave_index=0)) == (
            "The rollout is paused; resume it before promoting."
        )

        await update(handle, Update.RESUME, operator(reason="freeze over"))
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert fleet.assign_calls == {0: 1, 1: 1}
    assert [d.action for d in fleet.decisions] == [Update.PAUSE, Update.RESUME]
    assert [p.phase for p in fleet.phases][:4] == [Phase.SCHEDULED, Phase.RUNNING, Phase.PAUSED, Phase.RUNNING]


async def test_a_resume_during_a_health_check_reaches_the_database_before_the_promotion(time_env):
    """The database refuses to promote a paused rollout: a resume accepted while the health check that passes the
    wave is in flight must be projected before the promotion step, or the rollout would halt for nothing."""
    fleet = FakeFleet(waves=[finishing(10, ticks=3), finishing(100, ticks=1)], hold_health_check=(0, 3))
    plan = [wave("pilot", soak=60), wave("fleet", soak=60)]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        await wait_for(time_env, handle, lambda s: s.phase == Phase.RUNNING, step_seconds=1)
        await update(handle, Update.PAUSE, operator(reason="shift change"))
        await wait_for(time_env, handle, lambda s: fleet.phases[-1].phase == Phase.PAUSED, step_seconds=1)
        while not fleet.health_held.is_set():  # the check that will find the pilot passed starts, and waits
            await time_env.sleep(30)
        await update(handle, Update.RESUME, operator(reason="back"))
        fleet.health_release.set()
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert fleet.promotions == [0, 1] and not fleet.halts
    promote = fleet.calls.index((Activity.WAVE_PROMOTE, 0))
    last_projection = max(i for i, (name, _) in enumerate(fleet.calls[:promote]) if name == Activity.ROLLOUT_PHASE)
    assert fleet.calls[last_projection][1][0] == Phase.RUNNING


async def test_pause_during_a_window_wait_holds_the_assignment(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=1), finishing(100, ticks=1)], window_waits={1: [3600, 0]})
    plan = [wave("pilot", soak=60), wave("fleet", soak=60)]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        waiting = await wait_for(time_env, handle, lambda s: s.wave_index == 1, step_seconds=20)
        assert "allowed window" in waiting.message and 1 not in fleet.assign_calls
        await update(handle, Update.PAUSE, operator())
        await time_env.sleep(5 * 3600)
        assert 1 not in fleet.assign_calls and (await status(handle)).phase == Phase.PAUSED
        await update(handle, Update.RESUME, operator())
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    assert [arg for name, arg in fleet.calls if name == Activity.WAVE_WINDOW_WAIT] == [0, 1, 1]


async def test_a_failure_during_a_pause_still_halts_at_once(time_env):
    fleet = FakeFleet(waves=[FAILING_WAVE])
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input([wave("pilot", min_sample=10, failure=0.2)]), task_queue)
        await wait_for(time_env, handle, lambda s: s.phase == Phase.RUNNING, step_seconds=1)
        await update(handle, Update.PAUSE, operator())
        result = await handle.result()

    assert fleet.health_checks[0] == 3
    assert result.phase == Phase.ROLLED_BACK and not result.paused


async def test_the_status_query_reports_the_wave_and_its_health(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=1), [counts(40, succeeded=10, failed=1)]])
    plan = [wave("pilot", soak=60), wave("fleet", soak=3600)]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        current = await wait_for(time_env, handle, lambda s: s.wave_index == 1 and s.last_health is not None)
        await update(handle, Update.ABORT, operator(reason="test over"))
        await handle.result()

    assert current.rollout_id == fleet.halts[0].rollout_id
    assert (current.phase, current.wave_name, current.waves_total, current.gate) == (
        Phase.RUNNING,
        "fleet",
        2,
        Gate.NONE,
    )
    assert current.last_health == counts(40, succeeded=10, failed=1) and current.last_verdict == Verdict.CONTINUE
    assert current.message == "Wave fleet soaking: 10 succeeded, 1 failed, 29 unfinished of 40."


async def test_an_operator_rollback_mid_wave_runs_the_saga_and_refuses_a_second_one(time_env):
    slow_rollback = [counts(10)] * 5 + [counts(10, succeeded=10)]
    fleet = FakeFleet(waves=[finishing(10, ticks=1), finishing(100, ticks=20)], rollback_script=slow_rollback)
    plan = [wave("pilot", soak=60), wave("fleet", soak=3600)]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        await wait_for(time_env, handle, lambda s: s.wave_index == 1 and s.last_health is not None)
        await update(handle, Update.ROLLBACK, operator(reason="customer complaints"))
        rolling = await wait_for(time_env, handle, lambda s: s.phase == Phase.ROLLING_BACK, step_seconds=1)
        assert rolling.gate == Gate.NONE
        assert await refused(handle, Update.ROLLBACK, operator()) == "The rollout is already rolling back."
        assert "can be paused" in await refused(handle, Update.PAUSE, operator())
        result = await handle.result()

    assert result.phase == Phase.ROLLED_BACK
    assert fleet.rollback_checks == 6
    assert [h.wave_index for h in fleet.halts] == [1]
    assert fleet.finishes[0].actor_id == OPERATOR_ID
    assert [d.action for d in fleet.decisions] == [Update.ROLLBACK]


async def test_an_operator_may_abort_a_rollback_in_progress(time_env):
    fleet = FakeFleet(waves=[FAILING_WAVE], rollback_script=[counts(10)])
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input([wave("pilot", min_sample=10, failure=0.2)]), task_queue)
        await wait_for(time_env, handle, lambda s: s.phase == Phase.ROLLING_BACK)
        await update(handle, Update.ABORT, operator(reason="stop everything"))
        result = await handle.result()

    assert result.phase == Phase.ABORTED
    assert len(fleet.halts) == 1
    assert [f.outcome for f in fleet.finishes] == [Phase.ABORTED]


async def test_no_update_is_accepted_after_the_rollout_finished(time_env):
    fleet = FakeFleet(waves=[finishing(3, ticks=1)])
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input([wave("pilot", soak=0, min_sample=3)]), task_queue)
        result = await handle.result()
        assert result.phase == Phase.COMPLETED
        with pytest.raises(Exception):  # noqa: B017 - the server refuses updates to a closed workflow
            await update(handle, Update.ABORT, operator())
    assert fleet.decisions == []


async def test_a_step_refused_for_good_halts_and_waits_for_an_operator(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=1), finishing(100, ticks=1)], refuse_assign_waves={1})
    plan = [wave("pilot", soak=60), wave("fleet", soak=60)]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        stuck = await wait_for(time_env, handle, lambda s: s.gate == Gate.HALTED)
        assert (stuck.phase, stuck.wave_index) == (Phase.HALTED, 1)
        assert "The release was revoked." in stuck.message
        assert fleet.assign_calls[1] == 1  # a DomainError is not retried
        await update(handle, Update.ABORT, operator(reason="release revoked"))
        result = await handle.result()

    assert result.phase == Phase.ABORTED
    assert [h.wave_index for h in fleet.halts] == [1]


async def test_a_pause_racing_an_abort_is_refused_once_the_abort_is_authorized(time_env):
    slow_database = asyncio.Event()
    fleet = FakeFleet(waves=[finishing(100, ticks=50)], authorize_gate=slow_database)
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input([wave("fleet", soak=3600)]), task_queue)
        await wait_for(time_env, handle, lambda s: s.phase == Phase.RUNNING, step_seconds=1)
        abort = asyncio.create_task(update(handle, Update.ABORT, operator(reason="stop")))
        while Activity.HUMAN_ACTION_AUTHORIZE not in fleet.names():
            await asyncio.sleep(0.02)
        # The validator accepts the pause (the abort is not authorized yet); the handler re-checks and refuses.
        pause = asyncio.create_task(refused(handle, Update.PAUSE, operator()))
        await asyncio.sleep(0.3)
        slow_database.set()
        await abort
        assert await pause == "The rollout is already aborted; nothing more can be done."
        result = await handle.result()

    assert result.phase == Phase.ABORTED
    assert [d.action for d in fleet.decisions] == [Update.ABORT]


async def test_a_pause_accepted_with_a_promotion_shows_in_the_database_at_the_next_wave(time_env):
    """Promote and pause race at an open gate; both are accepted. The next run must project where it really is
    (wave 1, paused) instead of leaving the database at wave 0 until a resume."""
    slow_database = asyncio.Event()
    fleet = FakeFleet(waves=[finishing(10, ticks=2), finishing(100, ticks=2)], authorize_gate=slow_database)
    plan = [wave("pilot", promotion="manual"), wave("fleet")]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        await wait_for(time_env, handle, lambda s: s.gate == Gate.PROMOTION)
        promote = asyncio.create_task(update(handle, Update.PROMOTE, operator(wave_index=0, reason="go")))
        while Activity.HUMAN_ACTION_AUTHORIZE not in fleet.names():
            await asyncio.sleep(0.02)
        pause = asyncio.create_task(update(handle, Update.PAUSE, operator(reason="shift change")))
        await asyncio.sleep(0.3)
        slow_database.set()
        await promote
        await pause
        held = await wait_for(time_env, handle, lambda s: s.wave_index == 1, step_seconds=1)
        assert (held.phase, held.paused) == (Phase.PAUSED, True)
        for _ in range(100):
            if fleet.phases[-1].wave_index == 1:
                break
            await asyncio.sleep(0.05)
        assert (fleet.phases[-1].phase, fleet.phases[-1].wave_index) == (Phase.PAUSED, 1)
        assert 1 not in fleet.assign_calls
        await handle.terminate("test over")


async def test_each_human_action_reaches_the_database_under_the_id_of_its_update(time_env):
    fleet = FakeFleet(waves=[finishing(10, ticks=2), finishing(100, ticks=2)])
    plan = [wave("pilot", promotion="manual"), wave("fleet")]
    async with fleet_worker(time_env.client, fleet) as task_queue:
        handle = await start(time_env.client, rollout_input(plan), task_queue)
        await wait_for(time_env, handle, lambda s: s.gate == Gate.PROMOTION)
        for update_id, name, action in [
            ("pause-1", Update.PAUSE, operator()),
            ("resume-1", Update.RESUME, operator()),
            ("promote-1", Update.PROMOTE, operator(wave_index=0)),
        ]:
            await handle.execute_update(name, action, id=update_id, result_type=RolloutProgress)
        # The client retries an update it got no answer for with the same id: Temporal answers from the first.
        await handle.execute_update(Update.PROMOTE, operator(wave_index=0), id="promote-1", result_type=RolloutProgress)
        result = await handle.result()

    assert result.phase == Phase.COMPLETED
    # The id is the database's idempotency key of the decision (rollouts.step_keys): one per update, never reused.
    assert [(d.action, d.update_id) for d in fleet.decisions] == [
        (Update.PAUSE, "pause-1"),
        (Update.RESUME, "resume-1"),
        (Update.PROMOTE, "promote-1"),
    ]
