"""workflows.client against the session's dev server: connection, idempotent start, update refusals, status."""

from __future__ import annotations

import asyncio
import os
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import ImproperlyConfigured
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import TLSConfig

from ota_project.errors import Conflict, NotPermitted
from ota_project.net import free_port
from tests.temporal_support import in_temporal_loop, running_worker
from tests.workflows_runtime.helpers import OPERATOR_ID, STANDIN, new_rollout_id, rollout_input, start_attributes
from workflows import client as client_module
from workflows.client import (
    ConnectionSettings,
    TemporalUnavailable,
    execute_rollout_update,
    query_rollout_status,
    start_rollout_workflow,
    temporal_client,
)
from workflows.types import HumanAction, Phase, Update, rollout_workflow_id

OPERATOR = HumanAction(actor_id=OPERATOR_ID, actor_roles=["operator"], reason="pilot looks good", wave_index=0)


def test_client_connects_to_the_configured_server_and_is_cached_per_event_loop(temporal_settings):
    async def two_calls() -> tuple[Client, Client]:
        return await temporal_client(), await temporal_client()

    first, second = in_temporal_loop(two_calls())
    assert first is second
    assert first.namespace == temporal_settings.TEMPORAL_NAMESPACE
    assert first.service_client.config.target_host == temporal_settings.TEMPORAL_ADDRESS

    # Another event loop (another thread) gets a client of its own: clients are bound to their loop.
    other: list[Client] = []
    thread = threading.Thread(target=lambda: other.append(asyncio.run(temporal_client())))
    thread.start()
    thread.join()
    assert other and other[0] is not first


def test_tls_and_api_key_come_from_the_settings(tmp_path):
    cert, key, ca = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    cert.write_bytes(b"CERT")
    key.write_bytes(b"KEY")
    ca.write_bytes(b"CA")

    assert ConnectionSettings(address="127.0.0.1:7233").tls() is False
    assert ConnectionSettings(address="x.tmprl.cloud:7233", api_key="k").tls() is True
    tls = ConnectionSettings(
        address="temporal.internal:7233",
        tls_client_cert=str(cert),
        tls_client_key=str(key),
        tls_server_ca=str(ca),
        tls_server_name="temporal.internal",
    ).tls()
    assert isinstance(tls, TLSConfig)
    assert (tls.client_cert, tls.client_private_key, tls.server_root_ca_cert, tls.domain) == (
        b"CERT",
        b"KEY",
        b"CA",
        "temporal.internal",
    )
    with pytest.raises(ImproperlyConfigured):
        ConnectionSettings(address="a:1", tls_client_cert=str(cert)).tls()


def test_starting_a_rollout_twice_starts_one_workflow(temporal_settings):
    rollout_id = new_rollout_id()
    start_rollout_workflow(rollout_input(rollout_id), start_attributes())
    start_rollout_workflow(rollout_input(rollout_id), start_attributes())

    async def executions() -> list:
        client = await temporal_client()
        return [e async for e in client.list_workflows(f'WorkflowId="{rollout_workflow_id(rollout_id)}"')]

    async def describe():
        return await (await temporal_client()).get_workflow_handle(rollout_workflow_id(rollout_id)).describe()

    description = in_temporal_loop(describe())
    assert description.status == WorkflowExecutionStatus.RUNNING
    assert description.task_queue == temporal_settings.TEMPORAL_TASK_QUEUE
    assert description.workflow_type == "RolloutWorkflow"
    in_temporal_loop(_eventually(lambda: executions(), lambda found: len(found) >= 1))
    assert len(in_temporal_loop(executions())) == 1


def test_concurrent_starts_from_many_request_threads_start_one_workflow(temporal_settings):
    rollout_id = new_rollout_id()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            start_rollout_workflow(rollout_input(rollout_id), start_attributes())
        except BaseException as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    async def runs() -> int:
        client = await temporal_client()
        return len([e async for e in client.list_workflows(f'WorkflowId="{rollout_workflow_id(rollout_id)}"')])

    assert in_temporal_loop(_eventually(runs, lambda count: count >= 1)) == 1


def test_sync_helpers_work_in_a_forked_child_like_a_gunicorn_worker(temporal_settings):
    query_rollout_status(new_rollout_id())  # the parent has used Temporal before the fork
    rollout_id = new_rollout_id()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            start_rollout_workflow(rollout_input(rollout_id), start_attributes())
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0

    async def describe():
        return await (await temporal_client()).get_workflow_handle(rollout_workflow_id(rollout_id)).describe()

    assert in_temporal_loop(describe()).status == WorkflowExecutionStatus.RUNNING


def test_a_finished_rollout_is_not_started_again(temporal_settings):
    rollout_id = new_rollout_id()
    with running_worker(**STANDIN):
        start_rollout_workflow(rollout_input(rollout_id), start_attributes())
        execute_rollout_update(rollout_id, Update.ABORT, OPERATOR)

        async def result() -> str:
            return await (await temporal_client()).get_workflow_handle(rollout_workflow_id(rollout_id)).result()

        assert in_temporal_loop(result()) == Phase.ABORTED
        start_rollout_workflow(rollout_input(rollout_id), start_attributes())  # no error, no new run

    async def describe():
        return await (await temporal_client()).get_workflow_handle(rollout_workflow_id(rollout_id)).describe()

    assert in_temporal_loop(describe()).status == WorkflowExecutionStatus.COMPLETED


def test_update_returns_the_workflows_status(temporal_settings):
    rollout_id = new_rollout_id()
    with running_worker(**STANDIN):
        start_rollout_workflow(rollout_input(rollout_id), start_attributes())
        status = execute_rollout_update(rollout_id, Update.PROMOTE, OPERATOR)
        assert (status.rollout_id, status.message) == (rollout_id, "promoted wave 0")
        assert query_rollout_status(rollout_id) == status


@pytest.mark.parametrize(
    ("action", "update", "error", "message"),
    [
        (
            HumanAction(actor_id=9, actor_roles=["cab_member"], wave_index=0),
            Update.PROMOTE,
            NotPermitted,
            "Only an operator may promote a rollout.",
        ),
        (
            HumanAction(actor_id=OPERATOR_ID, actor_roles=["operator"], wave_index=1),
            Update.PROMOTE,
            Conflict,
            "Wave 1 (wave_index 0) is waiting for promotion, not wave 2 (wave_index 1).",
        ),
        (
            # refused by the authorize activity (the database), not by the validator
            HumanAction(actor_id=OPERATOR_ID, actor_roles=["operator"], reason="db-says-no", wave_index=0),
            Update.PROMOTE,
            NotPermitted,
            "Olga's operator role was revoked.",
        ),
    ],
    ids=["validator-not-permitted", "validator-conflict", "activity-not-permitted"],
)
def test_a_refused_update_raises_the_matching_domain_error_with_the_workflows_message(
    temporal_settings, action, update, error, message
):
    rollout_id = new_rollout_id()
    with running_worker(**STANDIN):
        start_rollout_workflow(rollout_input(rollout_id), start_attributes())
        with pytest.raises(error) as refused:
            execute_rollout_update(rollout_id, update, action)
        assert type(refused.value) is error
        assert refused.value.message == message
        status = query_rollout_status(rollout_id)
        assert status is not None and status.message == ""  # nothing changed


def test_a_plain_validator_refusal_is_a_conflict_and_changes_nothing(temporal_settings):
    rollout_id = new_rollout_id()
    with running_worker(**STANDIN):
        start_rollout_workflow(rollout_input(rollout_id), start_attributes())
        assert execute_rollout_update(rollout_id, Update.PAUSE, OPERATOR).paused is True
        with pytest.raises(Conflict, match="this one is paused"):
            execute_rollout_update(rollout_id, Update.PAUSE, OPERATOR)
        status = query_rollout_status(rollout_id)
        assert status is not None and status.phase == Phase.PAUSED


def test_update_or_query_of_a_rollout_without_workflow(temporal_settings):
    with pytest.raises(Conflict) as refused:
        execute_rollout_update(new_rollout_id(), Update.ABORT, OPERATOR)
    assert refused.value.code == "workflow_not_running"
    assert query_rollout_status(new_rollout_id()) is None
    with pytest.raises(ValueError):
        execute_rollout_update(1, "self_destruct", OPERATOR)


def test_an_update_nobody_answers_is_temporal_unavailable(temporal_settings, monkeypatch):
    monkeypatch.setattr(client_module, "UPDATE_TIMEOUT", timedelta(seconds=1))
    rollout_id = new_rollout_id()
    start_rollout_workflow(rollout_input(rollout_id), start_attributes())  # and no worker polls its task queue
    with pytest.raises(TemporalUnavailable, match="may still apply it"):
        execute_rollout_update(rollout_id, Update.PAUSE, OPERATOR)


def test_an_unreachable_server_is_temporal_unavailable(temporal_settings):
    temporal_settings.TEMPORAL_ADDRESS = f"127.0.0.1:{free_port()}"
    with pytest.raises(TemporalUnavailable) as unavailable:
        start_rollout_workflow(rollout_input(new_rollout_id()), start_attributes())
    assert unavailable.value.status_code == 503
    assert query_rollout_status(1) is None


def test_sync_helpers_refuse_to_block_an_event_loop(temporal_settings):
    async def from_async_code() -> None:
        query_rollout_status(1)

    with pytest.raises(RuntimeError, match="await the a... variant"):
        asyncio.run(from_async_code())


async def _eventually(fetch, done, timeout: float = 10.0):
    """Poll `fetch()` until `done(result)` (visibility is eventually consistent)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await fetch()
        if done(result) or asyncio.get_running_loop().time() > deadline:
            return result
        await asyncio.sleep(0.1)
