"""Temporal client helpers: connect from settings, start a rollout, send it a person's decision, ask its status.

Connection: `temporal_client()` connects with settings.TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / TEMPORAL_TLS_* /
TEMPORAL_API_KEY and caches one client per event loop (and per connection settings, so tests that point the
settings elsewhere get a fresh client).

How sync Django code calls the async client: every process gets ONE daemon thread running ONE asyncio event loop
(the "Temporal loop", created lazily, re-created after fork). Sync helpers hand their coroutine to it with
`asyncio.run_coroutine_threadsafe` and wait for the result with a timeout (`run_sync`). Why not asgiref's
`async_to_sync`: from a thread without a running loop (a gunicorn request thread, a management command, a pytest
test) it runs each call in a brand-new event loop, and a temporalio `Client` is bound to the loop it connected in
(not thread-safe, unusable from another loop), so every call would pay a new gRPC connection (and TLS handshake)
and leave the old one to be garbage-collected. The dedicated loop keeps one connection per process, may be called
from any number of threads at once, never blocks a caller without a timeout, and lets tests run a worker on the
same loop (`tests/temporal_support.running_worker`). Do not call the sync helpers from a running event loop
(async views): await the `a...` variants there.

Errors: a refusal by the workflow (an update validator, or the authorize activity) becomes the matching
`ota_project.errors.DomainError` with the workflow's message; a server or worker that does not answer becomes
`TemporalUnavailable` (HTTP 503).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
import weakref
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from temporalio.client import (
    Client,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
)
from temporalio.common import (
    SearchAttributeKey,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import (
    TimeoutError as WorkflowTimeoutError,
)
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.service import RPCError, RPCStatusCode, TLSConfig

from ota_project.errors import Conflict, DomainError, InvalidInput, NotPermitted
from workflows.search_attributes import to_typed_search_attributes
from workflows.types import (
    WORKFLOW_NAME,
    HumanAction,
    Query,
    RolloutInput,
    RolloutProgress,
    Update,
    rollout_workflow_id,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Deadlines keep a request thread's worst case (connect + update + grace = 22 s) under gunicorn's 30 s timeout.
CONNECT_TIMEOUT = timedelta(seconds=5)
# Starting and querying are single round trips; the sync helpers give up a little after the RPC deadline.
RPC_TIMEOUT = timedelta(seconds=10)
# An update waits until the workflow has validated it and its handler finished (which may run an activity);
# with no worker polling, nothing answers and the caller gets TemporalUnavailable after this long.
UPDATE_TIMEOUT = timedelta(seconds=15)
_SYNC_GRACE_SECONDS = 2.0

UPDATE_NAMES = frozenset({Update.PROMOTE, Update.ABORT, Update.ROLLBACK, Update.PAUSE, Update.RESUME})

# Server or network trouble: retrying later may help. Everything else is a bug or a misconfiguration.
_UNAVAILABLE = frozenset(
    {
        RPCStatusCode.UNAVAILABLE,
        RPCStatusCode.DEADLINE_EXCEEDED,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.CANCELLED,
        RPCStatusCode.ABORTED,
    }
)

# ApplicationError.type (or details[0]["code"]) -> DomainError class. Workflows and activities raise
# ApplicationError(message, type=<DomainError class name>, non_retryable=True); the error codes work too.
_DOMAIN_ERRORS: dict[str, type[DomainError]] = {
    "NotPermitted": NotPermitted,
    NotPermitted.code: NotPermitted,
    "Conflict": Conflict,
    Conflict.code: Conflict,
    "InvalidInput": InvalidInput,
    InvalidInput.code: InvalidInput,
    "DomainError": Conflict,
}


class TemporalUnavailable(DomainError):
    """Temporal (the server, the network or every worker) did not answer in time; try again later (HTTP 503)."""

    status_code = 503
    code = "temporal_unavailable"


# --- connection ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConnectionSettings:
    """Where and how to reach Temporal (read from Django settings, i.e. from the environment)."""

    address: str
    namespace: str = "default"
    api_key: str = ""
    tls_client_cert: str = ""
    tls_client_key: str = ""
    tls_server_ca: str = ""
    tls_server_name: str = ""

    @classmethod
    def from_settings(cls) -> ConnectionSettings:
        return cls(
            address=settings.TEMPORAL_ADDRESS,
            namespace=settings.TEMPORAL_NAMESPACE,
            api_key=settings.TEMPORAL_API_KEY,
            tls_client_cert=settings.TEMPORAL_TLS_CLIENT_CERT,
            tls_client_key=settings.TEMPORAL_TLS_CLIENT_KEY,
            tls_server_ca=settings.TEMPORAL_TLS_SERVER_CA,
            tls_server_name=settings.TEMPORAL_TLS_SERVER_NAME,
        )

    def tls(self) -> TLSConfig | bool:
        """TLS config: off for plain TCP (dev server), system roots with an API key alone, else from the PEM files."""
        if not (self.tls_client_cert or self.tls_client_key or self.tls_server_ca or self.tls_server_name):
            return bool(self.api_key)
        if bool(self.tls_client_cert) != bool(self.tls_client_key):
            raise ImproperlyConfigured("TEMPORAL_TLS_CLIENT_CERT and TEMPORAL_TLS_CLIENT_KEY must be set together")

        def read(path: str) -> bytes | None:
            return Path(path).read_bytes() if path else None

        return TLSConfig(
            client_cert=read(self.tls_client_cert),
            client_private_key=read(self.tls_client_key),
            server_root_ca_cert=read(self.tls_server_ca),
            domain=self.tls_server_name or None,
        )


async def connect(connection: ConnectionSettings) -> Client:
    """A new client connection (prefer the cached `temporal_client()`)."""
    _fresh_runtime_after_fork()
    return await Client.connect(
        connection.address,
        namespace=connection.namespace,
        api_key=connection.api_key or None,
        tls=connection.tls(),
        connect_timeout=CONNECT_TIMEOUT,
    )


_clients_lock = threading.Lock()
# Per loop: a connected Client, or the Task connecting it (so concurrent first callers share one attempt). Done
# tasks are replaced by their client, so nothing in a value keeps a finished loop alive.
_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[ConnectionSettings, Client | asyncio.Task[Client]]
] = weakref.WeakKeyDictionary()


async def temporal_client(connection: ConnectionSettings | None = None) -> Client:
    """The client for the running event loop and these settings (default: Django settings); connects once."""
    connection = connection or ConnectionSettings.from_settings()
    loop = asyncio.get_running_loop()
    with _clients_lock:
        per_loop = _clients.setdefault(loop, {})
        cached = per_loop.get(connection)
        if isinstance(cached, Client):
            return cached
        if cached is None:
            cached = loop.create_task(connect(connection))
            per_loop[connection] = cached
            cached.add_done_callback(lambda task: _settle(per_loop, connection, task))
    return await asyncio.shield(cached)


def _settle(
    per_loop: dict[ConnectionSettings, Client | asyncio.Task[Client]],
    connection: ConnectionSettings,
    task: asyncio.Task[Client],
) -> None:
    # Success: keep the client. Failure: forget the attempt, so the next call connects again.
    with _clients_lock:
        if per_loop.get(connection) is not task:
            return
        if task.cancelled() or task.exception() is not None:
            del per_loop[connection]
        else:
            per_loop[connection] = task.result()


# --- the Temporal loop: sync code -> async client -----------------------------------------------------------------


class _LoopThread:
    """A daemon thread running an event loop forever; the home of this process's sync-helper client."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="temporal-client-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def alive(self) -> bool:
        return self.pid == os.getpid() and self.thread.is_alive()


_loop_thread: _LoopThread | None = None
_loop_thread_lock = threading.Lock()


_needs_runtime = False


def _reset_after_fork() -> None:
    # gunicorn --preload (or any fork) after this process used Temporal: the loop thread does not survive a fork,
    # a lock held by another thread at fork time would never be released, and the SDK's core runtime refuses to
    # work in a child ("Cannot create client across forks").
    global _loop_thread, _loop_thread_lock, _clients_lock, _needs_runtime
    _loop_thread = None
    _loop_thread_lock = threading.Lock()
    _clients_lock = threading.Lock()
    _clients.clear()
    _needs_runtime = True


def _fresh_runtime_after_fork() -> None:
    global _needs_runtime
    if _needs_runtime:
        # A runtime of this process's own becomes the default for every later client and worker here.
        Runtime.set_default(Runtime(telemetry=TelemetryConfig()), error_if_already_set=False)
        _needs_runtime = False


os.register_at_fork(after_in_child=_reset_after_fork)


def temporal_loop() -> asyncio.AbstractEventLoop:
    """The process's Temporal loop (started on first use)."""
    global _loop_thread
    with _loop_thread_lock:
        if _loop_thread is None or not _loop_thread.alive():
            _loop_thread = _LoopThread()
        return _loop_thread.loop


def run_sync(coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
    """Run `coroutine` on the Temporal loop and wait for its result (TemporalUnavailable after `timeout` s)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coroutine.close()
        raise RuntimeError("workflows.client sync helpers block; from async code await the a... variant instead")
    future = asyncio.run_coroutine_threadsafe(coroutine, temporal_loop())
    try:
        return future.result(timeout)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TemporalUnavailable(f"Temporal did not answer within {timeout:.0f} s.") from None


def _sync_timeout(rpc_timeout: timedelta) -> float:
    # Connecting and the RPC itself each have their own deadline; the caller waits for both plus some slack.
    return (CONNECT_TIMEOUT + rpc_timeout).total_seconds() + _SYNC_GRACE_SECONDS


# --- rollouts ------------------------------------------------------------------------------------------------------


async def astart_rollout_workflow(
    input: RolloutInput,
    search_attributes: Mapping[SearchAttributeKey[Any] | str, object] | TypedSearchAttributes,
) -> None:
    """Start the rollout's workflow; a no-op if it runs or ever ran (deterministic id, duplicates rejected)."""
    typed_attributes = to_typed_search_attributes(search_attributes)
    client = await _client_or_unavailable()
    try:
        await client.start_workflow(
            WORKFLOW_NAME,
            input,
            id=rollout_workflow_id(input.rollout_id),
            task_queue=settings.TEMPORAL_TASK_QUEUE,
            # Running: attach to it (USE_EXISTING). Closed: refuse (REJECT_DUPLICATE) — a finished rollout is
            # never re-run by a retried start; a new rollout gets a new id.
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
            search_attributes=typed_attributes,
            static_summary=f"Rollout {input.rollout_id} of change {input.change_id}",
            rpc_timeout=RPC_TIMEOUT,
        )
    except WorkflowAlreadyStartedError:
        logger.info("rollout %s: workflow already ran, start is a no-op", input.rollout_id)
    except RPCError as err:
        if err.status in _UNAVAILABLE:
            raise TemporalUnavailable(f"Temporal did not answer: {err.message}") from err
        raise


def start_rollout_workflow(
    input: RolloutInput,
    search_attributes: Mapping[SearchAttributeKey[Any] | str, object] | TypedSearchAttributes,
) -> None:
    """Sync `astart_rollout_workflow` for services (call it in `transaction.on_commit`)."""
    run_sync(astart_rollout_workflow(input, search_attributes), _sync_timeout(RPC_TIMEOUT))


async def aexecute_rollout_update(rollout_id: int, update_name: str, action: HumanAction) -> RolloutProgress:
    """Send a person's decision (promote/abort/rollback/pause/resume) and return the status after it.

    A refusal by the workflow's validator or handler raises the matching DomainError with the workflow's message.
    """
    if update_name not in UPDATE_NAMES:
        raise ValueError(f"unknown rollout update {update_name!r}")
    client = await _client_or_unavailable()
    handle = client.get_workflow_handle(rollout_workflow_id(rollout_id))  # latest run (continue-as-new safe)
    try:
        status: RolloutProgress = await handle.execute_update(
            update_name, action, result_type=RolloutProgress, rpc_timeout=UPDATE_TIMEOUT
        )
        return status
    except WorkflowUpdateFailedError as err:
        raise domain_error_from_failure(err) from err
    except WorkflowUpdateRPCTimeoutOrCancelledError as err:
        raise TemporalUnavailable(
            f"The rollout workflow did not confirm '{update_name}' in time; it may still apply it. Check its status."
        ) from err
    except RPCError as err:
        raise _rpc_error(err, rollout_id) from err


def execute_rollout_update(rollout_id: int, update_name: str, action: HumanAction) -> RolloutProgress:
    """Sync `aexecute_rollout_update` for services."""
    return run_sync(aexecute_rollout_update(rollout_id, update_name, action), _sync_timeout(UPDATE_TIMEOUT))


async def aquery_rollout_status(rollout_id: int) -> RolloutProgress | None:
    """The workflow's own view of the rollout; None when it cannot answer (no such workflow, no worker, no server).

    Callers fall back to the database projection, which the workflow keeps up to date.
    """
    try:
        client = await _client_or_unavailable()
        handle = client.get_workflow_handle(rollout_workflow_id(rollout_id))
        queried: RolloutProgress = await handle.query(
            Query.STATUS, result_type=RolloutProgress, rpc_timeout=RPC_TIMEOUT
        )
        return queried
    except RPCError as err:
        if err.status != RPCStatusCode.NOT_FOUND:
            logger.warning("rollout %s: status query failed: %s", rollout_id, err.message)
        return None
    except (TemporalUnavailable, WorkflowQueryFailedError, WorkflowQueryRejectedError) as err:
        logger.warning("rollout %s: status query failed: %s", rollout_id, err)
        return None


def query_rollout_status(rollout_id: int) -> RolloutProgress | None:
    """Sync `aquery_rollout_status` for services and views."""
    try:
        return run_sync(aquery_rollout_status(rollout_id), _sync_timeout(RPC_TIMEOUT))
    except TemporalUnavailable as err:
        logger.warning("rollout %s: status query failed: %s", rollout_id, err.message)
        return None


# --- error mapping -------------------------------------------------------------------------------------------------


def domain_error_from_failure(err: BaseException) -> DomainError:
    """Map a failed update (validator refusal, handler or activity ApplicationError) to a DomainError."""
    first_application_error: ApplicationError | None = None
    node: BaseException | None = err.__cause__
    while node is not None:
        if isinstance(node, ApplicationError):
            first_application_error = first_application_error or node
            details = node.details[0] if node.details and isinstance(node.details[0], dict) else {}
            error_class = _DOMAIN_ERRORS.get(node.type or "") or _DOMAIN_ERRORS.get(str(details.get("code", "")))
            if error_class is not None:
                fields = details.get("fields") if isinstance(details.get("fields"), dict) else None
                code = details.get("code") if isinstance(details.get("code"), str) else None
                return error_class(node.message, fields=fields, code=code)
        elif isinstance(node, CancelledError | TerminatedError | WorkflowTimeoutError):
            return Conflict("The rollout workflow ended before it could apply this.", code="workflow_not_running")
        node = node.__cause__
    if first_application_error is not None:
        # Any other refusal (e.g. a validator's ValueError) still carries a message meant for the person.
        return Conflict(first_application_error.message)
    return Conflict(str(err))


def _rpc_error(err: RPCError, rollout_id: int) -> Exception:
    if err.status == RPCStatusCode.NOT_FOUND:
        return Conflict(f"Rollout {rollout_id} has no running workflow.", code="workflow_not_running")
    if err.status in _UNAVAILABLE:
        return TemporalUnavailable(f"Temporal did not answer: {err.message}")
    return err


async def _client_or_unavailable() -> Client:
    try:
        return await temporal_client()
    except RuntimeError as err:  # "Failed client connect: ..." from the core SDK
        raise TemporalUnavailable(f"Cannot connect to Temporal at {settings.TEMPORAL_ADDRESS}: {err}") from err
