"""Durability of the runtime: a dev server restarted on its database file keeps running workflows; the worker
command registers search attributes, polls, and stops cleanly on SIGTERM (and can be SIGKILLed and started again)."""

from __future__ import annotations

import subprocess
import sys

from temporalio.client import WorkflowExecutionStatus

from tests.temporal_support import REPO_ROOT, WorkerProcess, in_temporal_loop, running_worker, subprocess_env
from tests.workflows_runtime.helpers import OPERATOR_ID, STANDIN, new_rollout_id, rollout_input, start_attributes
from workflows.client import execute_rollout_update, query_rollout_status, start_rollout_workflow, temporal_client
from workflows.types import HumanAction, Phase, Update, rollout_workflow_id

OPERATOR = HumanAction(actor_id=OPERATOR_ID, actor_roles=["operator"], reason="maintenance")


def test_a_running_workflow_survives_a_restart_of_the_dev_server_on_its_database_file(
    temporal_settings, temporal_dev_server
):
    rollout_id = new_rollout_id()
    with running_worker(**STANDIN):
        start_rollout_workflow(rollout_input(rollout_id), start_attributes())
        assert execute_rollout_update(rollout_id, Update.PAUSE, OPERATOR).paused is True

        temporal_dev_server.restart()

        # Same workflow, same state (replayed from the persisted history), and it still takes decisions.
        status = query_rollout_status(rollout_id)
        assert status is not None and status.phase == Phase.PAUSED
        assert execute_rollout_update(rollout_id, Update.ABORT, OPERATOR).phase == Phase.ABORTED

        async def outcome() -> tuple[str, WorkflowExecutionStatus | None]:
            handle = (await temporal_client()).get_workflow_handle(rollout_workflow_id(rollout_id))
            return await handle.result(), (await handle.describe()).status

        assert in_temporal_loop(outcome()) == (Phase.ABORTED, WorkflowExecutionStatus.COMPLETED)


def test_the_worker_command_registers_search_attributes_and_exits(db, temporal_settings):
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "manage.py"), "temporal_worker", "--register-search-attributes"],
        env=subprocess_env(temporal_settings),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "all present" in completed.stdout


def test_the_worker_command_stops_gracefully_on_sigterm_and_restarts_after_sigkill(db, temporal_settings, tmp_path):
    worker = WorkerProcess(
        subprocess_env(temporal_settings), "--max-concurrent-activities", "2", log_path=tmp_path / "w.log"
    )
    worker.start()
    assert f"polling task queue {temporal_settings.TEMPORAL_TASK_QUEUE}" in worker.output()
    assert "2 activity slots" in worker.output()
    assert worker.kill() == -9

    worker.start()  # a new process takes over the task queue
    assert worker.terminate() == 0
    assert worker.output().rstrip().endswith("temporal_worker: stopped")
