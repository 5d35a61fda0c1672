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


def process_stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
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
