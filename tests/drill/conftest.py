"""The `drill` fixture: run a drill scenario small, on the session's Temporal dev server and the test database."""

from __future__ import annotations

import pytest

from rollouts.drill.run import DrillOptions, run_drill


@pytest.fixture
def drill(temporal_settings, temporal_dev_server):
    """drill(scenario, devices, timeout=180) -> the report of a drill on the session's Temporal dev server."""

    def _run(scenario: str, devices: int, *, timeout: float = 180) -> dict:
        options = DrillOptions(
            scenario=scenario,
            devices=devices,
            seed=7,
            web_processes=1,
            temporal_address=temporal_dev_server.address,
            timeout_seconds=timeout,
        )
        return run_drill(options)

    return _run
