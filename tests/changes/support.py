"""ChangeWorkflow over the real database on the time-skipping test server, driven from sync tests.

The tests are sync (the ORM refuses to run inside an event loop); the test server, its client and the worker live on
this process's Temporal loop (`in_temporal_loop`). TEMPORAL_ENABLED is off in these tests, so the services do not
reach for the configured server: the test starts the workflow and signals it itself after each decision, exactly as
`workflows.change_client.nudge_change_workflow` does after commit (the dev-server test covers that path).
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import Client, WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from tests.temporal_support import in_temporal_loop, wait_until
from tests.workflows.support import TEST_SERVER
from workflows.change import ChangeWorkflow
from workflows.change_activities import CHANGE_ACTIVITIES
from workflows.change_types import (
    CHANGE_WORKFLOW_NAME,
    ChangeInput,
    ChangeNudge,
    ChangeQuery,
    ChangeSignal,
    ChangeState,
    change_workflow_id,
)

T = TypeVar("T")
HISTORIES = Path(__file__).parent / "histories"


@dataclass
class TimeSkipping:
    """The time-skipping test server, a worker for ChangeWorkflow over the real activities, and its task queue."""

    env: WorkflowEnvironment
    task_queue: str

    @property
    def client(self) -> Client:
        return self.env.client

    def start(self, change_id: int) -> WorkflowHandle[Any, ChangeState]:
        return in_temporal_loop(
            self.client.start_workflow(
                CHANGE_WORKFLOW_NAME,
                ChangeInput(change_id=change_id),
                id=change_workflow_id(change_id),
                task_queue=self.task_queue,
                result_type=ChangeState,
            )
        )

    def nudge(self, change_id: int, reason: str = "test") -> None:
        handle = self.client.get_workflow_handle(change_workflow_id(change_id))
        in_temporal_loop(handle.signal(ChangeSignal.CHANGED, ChangeNudge(reason=reason)))

    def state(self, change_id: int) -> ChangeState:
        handle = self.client.get_workflow_handle(change_workflow_id(change_id))
        return in_temporal_loop(handle.query(ChangeQuery.STATE, result_type=ChangeState))

    def skip(self, duration: timedelta) -> None:
        """Move the server's clock forward (timers that come due fire)."""
        in_temporal_loop(self.env.sleep(duration))

    def settled(self, change_id: int, condition: Callable[[ChangeState], bool], timeout: float = 30.0) -> ChangeState:
        """Wait (real time) until the workflow's state satisfies `condition`."""
        found: list[ChangeState] = []

        def check() -> bool:
            current = self.state(change_id)
            found[:] = [current]
            return condition(current)

        wait_until(check, timeout, "the change workflow to settle", interval=0.1)
        return found[0]

    def save_history(self, change_id: int, name: str) -> None:
        """Record the workflow's history for the replay test (only with RECORD_CHANGE_HISTORIES=1)."""
        if os.environ.get("RECORD_CHANGE_HISTORIES") != "1":
            return
        handle = self.client.get_workflow_handle(change_workflow_id(change_id))
        history = in_temporal_loop(handle.fetch_history())
        (HISTORIES / f"{name}.json").write_text(history.to_json() + "\n")


@contextmanager
def time_skipping_worker() -> Iterator[TimeSkipping]:
    """A fresh time-skipping server with a ChangeWorkflow worker (real activities on a thread pool); the activities
    take the test server's skipped time as now (OTA_CHANGE_TIMERS_TEMPORAL_CLOCK, set by the caller's fixture)."""
    env = in_temporal_loop(WorkflowEnvironment.start_time_skipping(test_server_existing_path=TEST_SERVER))
    task_queue = f"changes-test-{uuid.uuid4().hex[:8]}"
    stop = asyncio.Event()
    executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="change-activity")

    async def run() -> None:
        async with Worker(
            env.client,
            task_queue=task_queue,
            workflows=[ChangeWorkflow],
            activities=CHANGE_ACTIVITIES,
            activity_executor=executor,
        ):
            await stop.wait()

    from workflows.client import temporal_loop

    loop = temporal_loop()
    future = asyncio.run_coroutine_threadsafe(run(), loop)
    time.sleep(0.5)
    try:
        yield TimeSkipping(env=env, task_queue=task_queue)
    finally:
        loop.call_soon_threadsafe(stop.set)
        try:
            future.result(timeout=30)
        finally:
            executor.shutdown(wait=False)
            in_temporal_loop(env.shutdown())
