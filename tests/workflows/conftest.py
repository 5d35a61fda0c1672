"""Temporal environments for the workflow tests, started once per session (each takes seconds to start).

These tests need no database: the activities are fakes over an in-memory fleet (tests/workflows/fakes.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from tests.workflows.support import DEV_SERVER, TEST_SERVER


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def time_env() -> AsyncIterator[WorkflowEnvironment]:
    """The time-skipping test server: timers fire as soon as the workflow would otherwise just wait."""
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=TEST_SERVER)
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    """The real dev server (the one `make run` uses), in memory, in real time."""
    env = await WorkflowEnvironment.start_local(dev_server_existing_path=DEV_SERVER, ui=False)
    try:
        yield env
    finally:
        await env.shutdown()
