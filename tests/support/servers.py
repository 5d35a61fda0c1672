"""Servers a test starts as real processes (gunicorn, nginx): started in the checkout, waited for until they listen,
stopped for sure; gunicorn with the project's configuration on the test's database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ota_project import processes
from ota_project.db import database_url


def process_start(argv: list[str], env: dict[str, str], log: Path, port: int) -> subprocess.Popen[bytes]:
    """Start `argv` (in the checkout, output to `log`) and wait until it listens on `port` of loopback."""
    with log.open("ab") as out:
        process = subprocess.Popen(argv, env=env, cwd=processes.REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{argv[0]} exited: {log.read_text()[-3000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{argv[0]} did not listen: {log.read_text()[-3000:]}")


def process_stop(process: subprocess.Popen[bytes], grace: float = 10) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def gunicorn_env(settings: Any, **overrides: str) -> dict[str, str]:
    """The environment of a gunicorn serving this test's database, artifact store, device PKI and proxy secret (no
    Temporal, the cache in each process), with `overrides`."""
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ota_project.settings",
        "DATABASE_URL": database_url(),
        "OTA_ARTIFACT_ROOT": str(settings.ARTIFACT_ROOT),
        "OTA_DEVICE_PKI_DIR": str(settings.DEVICE_PKI_DIR),
        "OTA_DEVICE_PROXY_SECRET_FILE": str(settings.DEVICE_PROXY_SECRET_FILE),
        "OTA_CACHE_URL": "",
        "TEMPORAL_ENABLED": "false",
        **overrides,
    }


def gunicorn_start(env: dict[str, str], log: Path, port: int, *options: str) -> subprocess.Popen[bytes]:
    """gunicorn with the project's configuration (ota_project/gunicorn_conf.py) on 127.0.0.1:`port`."""
    argv = [sys.executable, "-m", "gunicorn", "--config", str(processes.GUNICORN_CONF), "--bind", f"127.0.0.1:{port}"]
    return process_start([*argv, *options], env, log, port)


# An access log format naming the worker (its pid) and the status of each answer: see answering_workers.
WORKER_STATUS_FORMAT = "%(p)s %(s)s"


def gunicorn_device_workers(settings: Any, directory: Path, port: int, **overrides: str) -> subprocess.Popen[bytes]:
    """Two gunicorn workers of two threads each serving devices by secret credential without rate limits (the data
    directory `directory`, `overrides` in the environment), logging to directory/access.log which worker answered
    what (WORKER_STATUS_FORMAT)."""
    env = gunicorn_env(
        settings,
        OTA_DATA_DIR=str(directory),
        OTA_WEB_WORKERS="2",
        OTA_WEB_THREADS="2",
        OTA_DEVICE_AUTH="secret",
        OTA_DEVICE_RATE_PER_SECOND="0",
        OTA_UNAUTHENTICATED_RATE_PER_SECOND="0",
        **overrides,
    )
    log_options = ("--access-logfile", str(directory / "access.log"), "--access-logformat", WORKER_STATUS_FORMAT)
    return gunicorn_start(env, directory / "gunicorn.log", port, *log_options)


def answering_workers(access_log: Path, status: int) -> set[str]:
    """The workers (pids) that gave an answer of `status`, from an access log in WORKER_STATUS_FORMAT."""
    lines = access_log.read_text().splitlines() if access_log.exists() else []
    return {line.split()[0] for line in lines if line.endswith(f" {status}")}


def logged_requests(access_log: Path | None, fragment: str) -> int:
    """Requests in gunicorn's access log whose line contains `fragment`, once the log has settled (gunicorn writes
    a line after it sent the answer, so the client may read the answer first)."""
    counted, deadline = -1, time.monotonic() + 5
    while True:
        lines = access_log.read_text().splitlines() if access_log is not None and access_log.exists() else []
        count = sum(fragment in line for line in lines)
        if count == counted or time.monotonic() > deadline:
            return count
        counted = count
        time.sleep(0.5)
