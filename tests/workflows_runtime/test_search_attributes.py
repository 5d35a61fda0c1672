"""Operators find rollouts by search attribute, and drive them with the `temporal` CLI as the README shows."""

from __future__ import annotations

import json
import time

import pytest
from temporalio.common import SearchAttributeKey

from tests.temporal_support import in_temporal_loop, running_worker
from tests.workflows_runtime.helpers import (
    OPERATOR_ID,
    STANDIN,
    new_rollout_id,
    rollout_input,
    start_attributes,
    temporal_cli,
)
from workflows.client import start_rollout_workflow, temporal_client
from workflows.search_attributes import (
    ALL_KEYS,
    OTA_CHANGE_ID,
    OTA_PAUSED,
    OTA_PHASE,
    OTA_RELEASE_VERSION,
    OTA_WAVE,
    ensure_search_attributes,
    registered_search_attributes,
    to_typed_search_attributes,
)
from workflows.types import rollout_workflow_id


def test_the_rollout_search_attributes_are_registered_with_their_types(temporal_settings):
    listed = temporal_cli(temporal_settings.TEMPORAL_ADDRESS, "operator", "search-attribute", "list")
    text = json.dumps(listed)
    for key in ALL_KEYS:
        assert key.name in text

    async def registered() -> dict[str, int]:
        return await registered_search_attributes(await temporal_client())

    types = in_temporal_loop(registered())
    assert {key.name: types[key.name] for key in ALL_KEYS} == {
        key.name: int(key.indexed_value_type) for key in ALL_KEYS
    }


def test_registering_again_is_a_no_op(temporal_settings):
    async def again() -> list[str]:
        return await ensure_search_attributes(await temporal_client())

    assert in_temporal_loop(again()) == []


def test_an_operator_finds_a_rollout_by_phase_and_change_with_the_cli(temporal_settings):
    rollout_id = new_rollout_id()
    address = temporal_settings.TEMPORAL_ADDRESS
    with running_worker(**STANDIN):
        start_rollout_workflow(rollout_input(rollout_id, change_id=4711), start_attributes(change_id=4711))
        query = 'OtaChangeId=4711 AND OtaPhase="running" AND OtaPaused=false AND OtaReleaseVersion="2.4.1"'
        found = _list_until(address, query, lambda rows: len(rows) == 1)
        assert [row["execution"]["workflowId"] for row in found] == [rollout_workflow_id(rollout_id)]

        # The README runbook: pause with `temporal workflow update execute`, read status with a query.
        action = {"actor_id": OPERATOR_ID, "actor_roles": ["operator"], "reason": "night shift", "wave_index": -1}
        workflow_args = ("--workflow-id", rollout_workflow_id(rollout_id))
        update_args = (
            "workflow",
            "update",
            "execute",
            *workflow_args,
            "--name",
            "pause",
            "--input",
            json.dumps(action),
        )
        updated = temporal_cli(address, *update_args)
        assert updated["result"]["paused"] is True
        status = temporal_cli(address, "workflow", "query", *workflow_args, "--name", "status")
        assert status["queryResult"][0]["phase"] == "paused"
        paused = _list_until(address, "OtaChangeId=4711 AND OtaPaused=true", lambda rows: len(rows) == 1)
        assert paused[0]["execution"]["workflowId"] == rollout_workflow_id(rollout_id)


def test_search_attribute_values_are_checked_before_they_reach_the_server():
    typed = to_typed_search_attributes({OTA_CHANGE_ID: 42, "OtaReleaseVersion": "2.4.1", OTA_PHASE: "running"})
    assert typed[OTA_CHANGE_ID] == 42 and typed[OTA_RELEASE_VERSION] == "2.4.1"
    with pytest.raises(ValueError, match="unknown"):
        to_typed_search_attributes({"CustomKeywordField": "x"})
    with pytest.raises(ValueError, match="unknown"):
        to_typed_search_attributes({SearchAttributeKey.for_keyword("OtaWave"): "1"})  # right name, wrong type
    with pytest.raises(ValueError, match="needs int"):
        to_typed_search_attributes({OTA_WAVE: True})
    with pytest.raises(ValueError, match="needs bool"):
        to_typed_search_attributes({OTA_PAUSED: 1})


def _list_until(address: str, query: str, done, timeout: float = 15.0) -> list[dict]:
    """`temporal workflow list --query ...` until `done(rows)`: visibility is eventually consistent."""
    deadline = time.monotonic() + timeout
    while True:
        rows = temporal_cli(address, "workflow", "list", "--query", query) or []
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)
