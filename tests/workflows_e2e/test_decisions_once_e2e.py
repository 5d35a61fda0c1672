"""Every gate verdict and every human action is one decision record, on the real Temporal dev server, even when
each step's first attempt commits and then loses its reply (a worker that died before reporting) and the runs
continue as new in the middle of the rollback saga."""

from __future__ import annotations

import functools
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db.models import Count
from temporalio import activity, workflow
from temporalio.activity import _Definition

import workflows.rollout
from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify
from rollouts import rollout_services
from rollouts.choices import DeploymentKind, RolloutStatus
from rollouts.models import Deployment, Rollout
from tests.fleet_driver import FAIL_BOOT, HAPPY, finished, healthy, run_until
from tests.temporal_support import running_worker
from workflows import activities as real
from workflows.rollout import RolloutWorkflow
from workflows.types import WORKFLOW_NAME, RolloutInput
from workflows.types import RolloutProgress as WorkflowStatus

pytestmark = pytest.mark.django_db(transaction=True)


def fast_plan(*, pilot_promotion: str, abort_policy: str = "halt_and_rollback") -> dict:
    wave = {"soak_seconds": 1, "min_sample": 1, "success_threshold": 0.9, "failure_threshold": 0.1}
    return {
        "waves": [
            {"name": "pilot", "cohort": {"kind": "pilot"}, "promotion": pilot_promotion, **wave},
            {"name": "fleet", "cohort": {"kind": "percent", "value": 100}, "promotion": "auto", **wave},
        ],
        "abort_policy": abort_policy,
        "monitor_interval_seconds": 1,
        "deadlines": {"download_seconds": 60, "install_seconds": 60, "confirm_seconds": 60},
    }


class LostReplies:
    """The real activities, except that the first attempt of each decision step commits, then loses its reply."""

    STEPS = (
        real.human_action_authorize,
        real.wave_promote,
        real.rollout_phase,
        real.rollout_halt,
        real.rollback_assign,
        real.wave_health,
    )

    def __init__(self) -> None:
        self.attempts: Counter[str] = Counter()
        self.runs: dict[str, set[str]] = {}

    def activities(self) -> list[Callable[..., Any]]:
        lossy = {_Definition.must_from_callable(step).name: self._lossy(step) for step in self.STEPS}
        return [lossy.get(_Definition.must_from_callable(each).name, each) for each in real.ACTIVITIES]

    def _lossy(self, step: Callable[..., Any]) -> Callable[..., Any]:
        name = _Definition.must_from_callable(step).name
        assert name is not None  # the steps are defined activities, with their names

        @activity.defn(name=name)
        @functools.wraps(step, updated=())  # not its __dict__: that holds the activity definition
        def lossy(payload: Any) -> Any:
            info = activity.info()
            self.attempts[name] += 1
            assert info.workflow_run_id is not None  # an activity of a workflow, not a standalone one
            self.runs.setdefault(name, set()).add(info.workflow_run_id)
            result = step(payload)
            if info.attempt == 1:
                raise RuntimeError(f"{name}: the worker died after the commit, before it reported")
            return result

        return lossy


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class ShortRunRolloutWorkflow(RolloutWorkflow):
    """The real workflow, unsandboxed so a test can shrink its history budget (continue-as-new every few steps)."""

    @workflow.run
    async def run(self, inp: RolloutInput) -> WorkflowStatus:
        return await super().run(inp)


def _actions(rollout: Rollout) -> Counter[str]:
    return Counter(
        DecisionRecord.objects.filter(object_type="rollout", object_id=str(rollout.pk)).values_list("action", flat=True)
    )


def _each_step_key_once_and_chain_whole() -> None:
    twice = DecisionRecord.objects.exclude(step_key=None).values("step_key").annotate(n=Count("pk")).filter(n__gt=1)
    assert list(twice) == []
    verdict = chain_verify()
    assert verdict.ok, verdict.problems


@pytest.fixture
def lost() -> Iterator[LostReplies]:
    yield LostReplies()


def test_human_actions_and_gate_verdicts_are_one_record_each_though_every_reply_is_lost(start, operator, lost):
    with running_worker(activities=lost.activities()):
        rollout = run_until(
            start(fast_plan(pilot_promotion="manual")).pk,
            healthy,
            lambda r: r.status == RolloutStatus.AWAITING_PROMOTION,
            timeout=90,
        )
        act = functools.partial(rollout_services.rollout_act, actor=operator, rollout=rollout)
        assert act(action="pause", reason="shift change").paused is True
        assert act(action="resume", reason="back").paused is False
        act(action="promote", wave_index=0, reason="pilot fine")
        rollout = run_until(rollout.pk, healthy, finished, timeout=120)

    assert rollout.status == RolloutStatus.COMPLETED
    # Each authorisation ran twice (its first reply lost) and still moved the rollout.
    assert lost.attempts["rollouts.human_action_authorize"] == 6
    actions = _actions(rollout)
    assert (actions["rollout.pause"], actions["rollout.resume"], actions["rollout.promote"]) == (1, 1, 1)
    assert actions["rollout.hold"] == 1  # the manual gate on the pilot, through pause and resume
    assert actions["rollout.promote_auto"] == 1 and lost.attempts["rollouts.wave_promote"] >= 2
    assert actions["rollout.completed"] == 1
    hold = DecisionRecord.objects.get(action="rollout.hold")
    assert hold.after is not None
    assert (hold.after["wave"], hold.after["gate"]) == (0, "promotion")
    _each_step_key_once_and_chain_whole()


def test_a_halt_and_rollback_across_continue_as_new_is_one_record_each(start, lost, monkeypatch):
    monkeypatch.setattr(workflows.rollout, "HISTORY_EVENT_BUDGET", 40)
    held_until = time.monotonic() + 1e9
    seen: list[int] = []

    def pilot_fails_rollback_waits(deployment: Deployment) -> tuple[str, ...] | None:
        nonlocal held_until
        if deployment.kind == DeploymentKind.ROLLBACK:
            # Keep the saga running until its assignment was asked for again by a later run.
            if len(lost.runs.get("rollouts.rollback_assign", ())) < 2 and time.monotonic() < held_until:
                return None
            return HAPPY
        seen.append(deployment.device_id)
        return HAPPY if len(seen) == 1 else FAIL_BOOT

    with running_worker(workflows=[ShortRunRolloutWorkflow], activities=lost.activities()):
        rollout = start(fast_plan(pilot_promotion="auto"))
        rollout = run_until(rollout.pk, pilot_fails_rollback_waits, lambda r: r.status == RolloutStatus.ROLLING_BACK)
        held_until = time.monotonic() + 60
        rollout = run_until(rollout.pk, pilot_fails_rollback_waits, finished, timeout=120)

    assert rollout.status == RolloutStatus.ROLLED_BACK
    assert len(lost.runs["rollouts.rollback_assign"]) >= 2  # the saga's assignment ran again in a later run
    actions = _actions(rollout)
    assert actions["rollout.halt"] == 1 and actions["rollout.stop_offering"] == 1
    assert actions["rollout.breaker_tripped"] == 1
    assert actions["rollout.rolling_back"] == 1 and actions["rollout.rollback_assign"] == 1
    assert actions["rollout.rolled_back"] == 1
    assert not Deployment.objects.filter(rollout=rollout, wave__index=1).exists()
    _each_step_key_once_and_chain_whole()
