"""Small builders shared by the runtime tests."""

from __future__ import annotations

import itertools
import json
import subprocess
from collections.abc import Callable, Sequence
from typing import Any, TypedDict

from tests.temporal_support import TEMPORAL_BIN
from tests.workflows_runtime.standins import StandInRolloutWorkflow, standin_authorize
from workflows.search_attributes import rollout_search_attributes
from workflows.types import Phase, RolloutInput, WavePlan


class WorkerParts(TypedDict):
    """The workflows and activities a test worker runs (`running_worker(**parts)`)."""

    workflows: Sequence[type]
    activities: Sequence[Callable[..., Any]]


STANDIN: WorkerParts = {"workflows": [StandInRolloutWorkflow], "activities": [standin_authorize]}
AUTHOR_ID = 3
OPERATOR_ID = 7

# Rollout ids unique within the session: every test shares one dev server.
_rollout_ids = itertools.count(900_000)


def new_rollout_id() -> int:
    return next(_rollout_ids)


def rollout_input(rollout_id: int, change_id: int = 42) -> RolloutInput:
    wave = WavePlan(
        name="pilot",
        soak_seconds=3600,
        min_sample=3,
        success_threshold=0.95,
        failure_threshold=0.05,
        promotion="manual",
    )
    return RolloutInput(
        rollout_id=rollout_id, change_id=change_id, author_id=AUTHOR_ID, waves=[wave], abort_policy="halt"
    )


def start_attributes(change_id: int = 42, release_version: str = "2.4.1") -> Any:
    return rollout_search_attributes(change_id=change_id, release_version=release_version, phase=Phase.SCHEDULED)


def temporal_cli(address: str, *args: str, namespace: str = "default", timeout: float = 30) -> Any:
    """Run the `temporal` CLI as an operator would, against `address`; parse its JSON output."""
    completed = subprocess.run(
        [str(TEMPORAL_BIN), *args, "--address", address, "--namespace", namespace, "--output", "json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, f"temporal {' '.join(args)} failed: {completed.stderr or completed.stdout}"
    text = completed.stdout.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        # `workflow list` prints one JSON document per line
        return [json.loads(line) for line in text.splitlines() if line.strip()]
