"""Helpers for the workflow tests: plans, people, a worker over a fake fleet, waiting and history fetching."""

from __future__ import annotations

import itertools
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle, WorkflowHistory
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.workflows.fakes import FakeFleet
from workflows.rollout import RolloutWorkflow
from workflows.types import (
    WORKFLOW_NAME,
    HumanAction,
    Query,
    RolloutInput,
    RolloutProgress,
    WavePlan,
    rollout_workflow_id,
)

BIN = Path(sys.prefix) / "bin"
TEST_SERVER = str(BIN / "temporal-test-server")
DEV_SERVER = str(BIN / "temporal")

AUTHOR_ID = 7  # wrote the change request
OPERATOR_ID = 11
OTHER_OPERATOR_ID = 12
CAB_MEMBER_ID = 13

_rollout_ids = itertools.count(1000)
_started: dict[str, list[WorkflowHandle[Any, Any]]] = {}  # task queue -> workflows started on it


def wave(
    name: str,
    *,
    soak: int = 600,
    min_sample: int = 5,
    success: float = 0.95,
    failure: float = 0.1,
    promotion: str = "auto",
) -> WavePlan:
    return WavePlan(
        name=name,
        soak_seconds=soak,
        min_sample=min_sample,
        success_threshold=success,
        failure_threshold=failure,
        promotion=promotion,
    )


def rollout_input(
    waves: list[WavePlan], *, abort_policy: str = "halt_and_rollback", interval: int = 60, **extra: Any
) -> RolloutInput:
    return RolloutInput(
        rollout_id=next(_rollout_ids),
        change_id=1,
        author_id=AUTHOR_ID,
        waves=waves,
        abort_policy=abort_policy,
        monitor_interval_seconds=interval,
        **extra,
    )


def operator(
    actor_id: int = OPERATOR_ID, *, wave_index: int = -1, reason: str = "checked the dashboards"
) -> HumanAction:
    return HumanAction(actor_id=actor_id, actor_roles=["operator"], reason=reason, wave_index=wave_index)


@asynccontextmanager
async def fleet_worker(
    client: Client, fleet: FakeFleet, *, task_queue: str = "", keep_running: bool = False, **worker_options: Any
) -> AsyncIterator[str]:
    """Run a worker (sandbox on) for RolloutWorkflow over the fleet's fake activities; yields its task queue.

    On leaving, workflows started on the task queue that still run are terminated, unless `keep_running`
    (a worker "killed" mid-wave; a second worker on the same `task_queue` takes over and cleans up).
    """
    task_queue = task_queue or f"rollouts-test-{uuid.uuid4()}"
    try:
        async with Worker(
            client,
            task_queue=task_queue,
            workflows=[RolloutWorkflow],
            activities=fleet.activities,
            **worker_options,
        ):
            yield task_queue
    finally:
        if not keep_running:
            await _terminate_leftovers(client, _started.pop(task_queue, []))


async def _terminate_leftovers(client: Client, handles: list[WorkflowHandle[Any, Any]]) -> None:
    """A failed test must not leave a workflow behind: on the time-skipping server, a workflow with pending
    work and no worker stops time from skipping for every later test."""
    for handle in handles:
        latest = client.get_workflow_handle(handle.id)
        try:
            if (await latest.describe()).status == WorkflowExecutionStatus.RUNNING:
                await latest.terminate(reason="test over")
        except RPCError:
            pass


async def start(client: Client, inp: RolloutInput, task_queue: str) -> WorkflowHandle[Any, RolloutProgress]:
    """Start the workflow; the handle addresses the latest run (updates, queries) and its result follows
    continue-as-new. Keep using it: on the time-skipping server only a started handle's result() skips time."""
    handle = await client.start_workflow(
        WORKFLOW_NAME,
        inp,
        id=rollout_workflow_id(inp.rollout_id),
        task_queue=task_queue,
        result_type=RolloutProgress,
    )
    _started.setdefault(task_queue, []).append(handle)
    return handle


async def status(handle: WorkflowHandle[Any, Any]) -> RolloutProgress:
    """Query the latest run's status.

    A query that reaches the time-skipping test server just as the run continues as new is sometimes never
    answered; ask with a short deadline and again, instead of waiting for the default one.
    """
    for _ in range(5):
        try:
            return await handle.query(Query.STATUS, result_type=RolloutProgress, rpc_timeout=timedelta(seconds=2))
        except RPCError as err:
            last_error = err
    raise last_error


async def wait_for(
    env: WorkflowEnvironment,
    handle: WorkflowHandle[Any, Any],
    condition: Callable[[RolloutProgress], bool],
    *,
    step_seconds: float = 30,
    attempts: int = 400,
) -> RolloutProgress:
    """Query until `condition(status)` holds, skipping `step_seconds` of (test server) time between queries."""
    for _ in range(attempts):
        current = await status(handle)
        if condition(current):
            return current
        await env.sleep(step_seconds)
    raise AssertionError(f"condition never held; last status: {current}")


async def run_histories(client: Client, started: WorkflowHandle[Any, Any]) -> list[WorkflowHistory]:
    """Histories of every run of a started workflow, first to last, following continue-as-new."""
    histories: list[WorkflowHistory] = []
    run_id = started.first_execution_run_id or started.result_run_id or started.run_id
    while run_id:
        history = await client.get_workflow_handle(started.id, run_id=run_id).fetch_history()
        histories.append(history)
        last = history.events[-1]
        run_id = None
        if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
            run_id = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
    return histories
