"""Every committed ChangeWorkflow history replays under the current workflow (re-record them with
`RECORD_CHANGE_HISTORIES=1 pytest tests/changes/test_change_timers.py`, and keep the old files).

A failure here means a change to ChangeWorkflow would break change workflows already running: guard it with
`workflow.patched(...)` instead of editing the histories.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.workflow import NondeterminismError

from workflows.change import ChangeWorkflow
from workflows.change_types import CHANGE_WORKFLOW_NAME, ChangeActivity, ChangeInput, ChangeState

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(f"change-{path.stem}", path.read_text())


def activities(history: WorkflowHistory) -> list[str]:
    return [
        event.activity_task_scheduled_event_attributes.activity_type.name
        for event in history.events
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
    ]


def test_there_are_histories_of_every_timer():
    assert {p.stem for p in HISTORIES} >= {
        "review_reminders_and_escalation",
        "approval_lapse",
        "scheduled_start",
        "start_held",
    }


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("path", HISTORIES, ids=lambda path: path.stem)
async def test_history_replays(path: Path):
    history = load(path)
    assert ChangeActivity.CHANGE_FIRE in activities(history)  # each one recorded at least one timer firing
    await Replayer(workflows=[ChangeWorkflow]).replay_workflow(history)


@workflow.defn(name=CHANGE_WORKFLOW_NAME, sandboxed=False)
class ChangeWorkflowWithoutTimers(ChangeWorkflow):
    """A careless edit: the workflow only reads the change and never fires its timers."""

    @workflow.run
    async def run(self, inp: ChangeInput) -> ChangeState:
        state = await self._step(ChangeActivity.CHANGE_SYNC, "")
        await workflow.wait_condition(lambda: state.closed)
        return state


@pytest.mark.asyncio(loop_scope="session")
async def test_replay_catches_an_unguarded_change_to_the_workflow():
    history = load(Path(__file__).parent / "histories" / "scheduled_start.json")
    with pytest.raises(NondeterminismError):
        await Replayer(workflows=[ChangeWorkflowWithoutTimers]).replay_workflow(history)
