"""Every committed history replays under the current RolloutWorkflow (re-record with make_histories.py).

A failure here means a change to the workflow would break rollouts already running in production: guard the
change with `workflow.patched(...)` (see `MONITOR_CLAMP_PATCH` in workflows/rollout.py) instead of editing the
histories.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from workflows.rollout import AUTO_PROMOTION_RECORD_PATCH, MONITOR_CLAMP_PATCH, RolloutWorkflow
from workflows.types import WORKFLOW_NAME, RolloutInput, RolloutProgress

HISTORY_DIR = Path(__file__).parent / "histories"
HISTORIES = sorted(HISTORY_DIR.glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.name.split(".")[0], path.read_text())


def patch_markers(history: WorkflowHistory) -> list[str]:
    """Ids of the `workflow.patched` markers a run recorded."""
    ids = []
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
            attributes = event.marker_recorded_event_attributes
            if attributes.marker_name == "core_patch":
                ids.append(json.loads(attributes.details["patch-data"].payloads[0].data)["id"])
    return ids


def timer_seconds(history: WorkflowHistory) -> list[float]:
    return [
        event.timer_started_event_attributes.start_to_fire_timeout.ToTimedelta().total_seconds()
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_TIMER_STARTED
    ]


def test_there_are_histories_of_every_ending():
    names = {path.name.split(".")[0] for path in HISTORIES}
    assert {"healthy_3_waves", "fail_halt_and_rollback", "fail_halt_then_abort", "v1_before_patches"} <= names
    assert len(HISTORIES) >= 15


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("path", HISTORIES, ids=lambda path: path.stem)
async def test_history_replays(path: Path):
    await Replayer(workflows=[RolloutWorkflow]).replay_workflow(load(path))


@pytest.mark.asyncio(loop_scope="session")
async def test_a_history_from_before_the_patches_replays_on_the_old_path():
    old = load(HISTORY_DIR / "v1_before_patches.run1.json")
    new = load(HISTORY_DIR / "soak_clamp.run1.json")
    # Same scenario (150 s soak, checks every 60 s): the old run checked at 0, 60, 120 and 180 s, the new one
    # clamps its last wait to the soak's end and checks at 150 s, then records the automatic promotion.
    assert patch_markers(old) == [] and [round(s) for s in timer_seconds(old)] == [60, 60, 60]
    assert patch_markers(new) == [MONITOR_CLAMP_PATCH, AUTO_PROMOTION_RECORD_PATCH]
    assert [round(s) for s in timer_seconds(new)] == [60, 60, 30]
    await Replayer(workflows=[RolloutWorkflow]).replay_workflow(old)


@workflow.defn(name=WORKFLOW_NAME, sandboxed=False)
class UnguardedRolloutWorkflow(RolloutWorkflow):
    """The current workflow as if its changes had been made without `workflow.patched`."""

    @workflow.run
    async def run(self, inp: RolloutInput) -> RolloutProgress:
        return await super().run(inp)

    def _patched(self, patch_id: str) -> bool:
        return True


@pytest.mark.asyncio(loop_scope="session")
async def test_without_the_guards_the_old_history_would_not_replay():
    with pytest.raises(NondeterminismError):
        await Replayer(workflows=[UnguardedRolloutWorkflow]).replay_workflow(
            load(HISTORY_DIR / "v1_before_patches.run1.json")
        )
