"""RecurringAuditWorkflow with a fake activity on the time-skipping server, and replay of its committed history.

Record the history again (after a deliberate change guarded by `workflow.patched`, keep the old file):

    .venv/bin/python -m tests.workflows.test_maintenance
"""

from __future__ import annotations

import asyncio
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.exceptions import ApplicationError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from approvals.audit.choices import RECURRING_AUDIT_KINDS
from tests.workflows.support import TEST_SERVER
from workflows.maintenance import ExpiryAuditWorkflow, ImageRepositoryRefreshWorkflow, RecurringAuditWorkflow
from workflows.types import AUDIT_EVERY_SECONDS, AUDIT_WORKFLOW, AuditResult, AuditRun, MaintenanceActivity

HISTORY_DIR = Path(__file__).parent / "maintenance_histories"
HISTORIES = sorted(HISTORY_DIR.glob("*.json"))
MAINTENANCE_WORKFLOWS = [ImageRepositoryRefreshWorkflow, ExpiryAuditWorkflow, RecurringAuditWorkflow]
_calls: list[str] = []


@activity.defn(name=MaintenanceActivity.AUDIT_RUN)
def fake_audit_run(run: AuditRun) -> AuditResult:
    """The activity's contract without a database: unknown kinds are refused for good."""
    _calls.append(run.kind)
    if run.kind not in AUDIT_EVERY_SECONDS:
        raise ApplicationError("Unknown audit", type="UnknownAudit", non_retryable=True)
    return AuditResult(kind=run.kind, opened=2, refreshed=1, resolved=0, open=3, critical=1)


async def _run(client: Client, kind: str) -> tuple[AuditResult, WorkflowHistory]:
    task_queue = f"audits-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[RecurringAuditWorkflow],
        activities=[fake_audit_run],
        activity_executor=ThreadPoolExecutor(2),
    ):
        handle = await client.start_workflow(
            AUDIT_WORKFLOW, AuditRun(kind=kind), id=f"audit-{kind}-{uuid.uuid4().hex[:8]}", task_queue=task_queue,
            result_type=AuditResult,
        )  # fmt: skip
        try:
            result = await handle.result()
        finally:
            history = await handle.fetch_history()
    return result, history


def test_audit_kinds_are_one_list_for_the_workflow_types_the_model_and_the_audits():
    from rollouts.audits import AUDITS

    assert set(AUDIT_EVERY_SECONDS) == RECURRING_AUDIT_KINDS == set(AUDITS)
    assert all(every >= 60 for every in AUDIT_EVERY_SECONDS.values())


@pytest.mark.asyncio(loop_scope="session")
async def test_the_workflow_runs_its_audit_once_and_returns_what_it_changed(time_env: WorkflowEnvironment):
    _calls.clear()
    result, _history = await _run(time_env.client, "stale_devices")
    assert result == AuditResult(kind="stale_devices", opened=2, refreshed=1, resolved=0, open=3, critical=1)
    assert _calls == ["stale_devices"]
    with pytest.raises(WorkflowFailureError):
        await _run(time_env.client, "everything")
    assert _calls[1:] == ["everything"]  # refused for good: not retried


def test_there_is_a_committed_history_of_every_maintenance_workflow_we_can_replay():
    assert {path.name.split(".")[0] for path in HISTORIES} >= {"recurring_audit"}


@pytest.mark.asyncio(loop_scope="session")
@pytest.mark.parametrize("path", HISTORIES, ids=lambda path: path.stem)
async def test_maintenance_history_replays(path: Path):
    history = WorkflowHistory.from_json(path.name.split(".")[0], path.read_text())
    await Replayer(workflows=MAINTENANCE_WORKFLOWS).replay_workflow(history)


async def _record() -> None:
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=TEST_SERVER)
    try:
        _result, history = await _run(env.client, "certificates")
        (HISTORY_DIR / "recurring_audit.run1.json").write_text(history.to_json())
    finally:
        await env.shutdown()


if __name__ == "__main__":
    asyncio.run(_record())
