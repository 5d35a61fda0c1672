"""The Temporal worker: runs RolloutWorkflow, the rollout activities and the scheduled maintenance workflows
(workflows/maintenance.py, their schedules made at start by workflows/schedules.py) on settings.TEMPORAL_TASK_QUEUE.

Started by `python manage.py temporal_worker` (one per process; run as many processes as you like, on as many
machines: they share the task queue). Activities are sync functions touching the Django ORM, so they run on a
thread pool as large as the number of activities the worker may run at once; each one opens and closes its
own database connections (see workflows/activities.py). SIGTERM or SIGINT stops polling, lets running activities
finish for `graceful_shutdown_seconds`, then cancels them; a second signal exits at once. Nothing is lost either
way: Temporal retries whatever a dead worker did not report, and every activity is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from django.conf import settings
from temporalio.client import Client
from temporalio.worker import Worker

from workflows.client import temporal_client
from workflows.schedules import ensure_schedules
from workflows.search_attributes import ensure_search_attributes

logger = logging.getLogger(__name__)

DEFAULT_MAX_CONCURRENT_ACTIVITIES = 8
DEFAULT_GRACEFUL_SHUTDOWN_SECONDS = 30


def default_registrations() -> tuple[list[type], list[Callable[..., Any]]]:
    """The project's workflows and activities (imported late: activities need a configured Django)."""
    from workflows.activities import ACTIVITIES
    from workflows.change import ChangeWorkflow
    from workflows.change_activities import CHANGE_ACTIVITIES
    from workflows.maintenance import ExpiryAuditWorkflow, ImageRepositoryRefreshWorkflow, RecurringAuditWorkflow
    from workflows.rollout import RolloutWorkflow

    return (
        [RolloutWorkflow, ChangeWorkflow, ImageRepositoryRefreshWorkflow, ExpiryAuditWorkflow, RecurringAuditWorkflow],
        [*ACTIVITIES, *CHANGE_ACTIVITIES],
    )


async def run_worker(
    *,
    client: Client | None = None,
    task_queue: str | None = None,
    workflows: Sequence[type] | None = None,
    activities: Sequence[Callable[..., Any]] | None = None,
    max_concurrent_activities: int = DEFAULT_MAX_CONCURRENT_ACTIVITIES,
    graceful_shutdown_seconds: float = DEFAULT_GRACEFUL_SHUTDOWN_SECONDS,
    stop: asyncio.Event | None = None,
    handle_signals: bool = True,
    on_started: Callable[[Worker], None] | None = None,
) -> None:
    """Register the search attributes, then poll until `stop` is set or SIGTERM/SIGINT arrives.

    Defaults: the cached client from settings, settings.TEMPORAL_TASK_QUEUE, RolloutWorkflow and ACTIVITIES.
    Tests pass their own workflows/activities, a `stop` event and handle_signals=False (signals need the main
    thread). Raises if the worker fails (e.g. the namespace does not exist).
    """
    with_defaults = workflows is None
    if workflows is None or activities is None:
        default_workflows, default_activities = default_registrations()
        workflows = default_workflows if workflows is None else workflows
        activities = default_activities if activities is None else activities
    client = client or await temporal_client()
    task_queue = task_queue or settings.TEMPORAL_TASK_QUEUE
    await ensure_search_attributes(client)
    if with_defaults:  # the worker that runs the scheduled workflows makes sure their schedules exist
        await ensure_schedules(client, task_queue)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    if handle_signals:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, _on_signal, signum, stop)
    try:
        # One thread per activity slot: sync activities block their thread for the whole call.
        with ThreadPoolExecutor(max_workers=max_concurrent_activities, thread_name_prefix="ota-activity") as executor:
            worker = Worker(
                client,
                task_queue=task_queue,
                workflows=list(workflows),
                activities=list(activities),
                activity_executor=executor,
                max_concurrent_activities=max_concurrent_activities,
                graceful_shutdown_timeout=timedelta(seconds=graceful_shutdown_seconds),
            )
            await _run_until(worker, stop, on_started)
    finally:
        if handle_signals:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)


async def _run_until(worker: Worker, stop: asyncio.Event, on_started: Callable[[Worker], None] | None) -> None:
    run_task = asyncio.create_task(worker.run())
    stop_task = asyncio.create_task(stop.wait())
    await asyncio.sleep(0)  # let the worker start validating before we announce it
    if on_started is not None:
        on_started(worker)
    try:
        done, _ = await asyncio.wait({run_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        if run_task not in done:
            logger.info("temporal worker: shutting down (in-flight activities get a grace period)")
            await worker.shutdown()
    finally:
        stop_task.cancel()
    await run_task  # re-raises a fatal worker error


def _on_signal(signum: int, stop: asyncio.Event) -> None:
    if stop.is_set():
        # Second signal: the operator does not want to wait. Temporal retries what this worker leaves unfinished.
        logger.warning("temporal worker: second %s, exiting now", signal.Signals(signum).name)
        os._exit(128 + signum)
    logger.info("temporal worker: %s received, stopping", signal.Signals(signum).name)
    stop.set()
