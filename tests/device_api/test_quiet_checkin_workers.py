"""Quiet check-ins under the real server: two gunicorn workers (the project's configuration) each answer a device
from memory, both refuse it within OTA_CHECKIN_EPOCH_SECONDS of its credential's revocation (the database's epoch,
not a message between processes), and what they answered from memory is written when they exit."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.utils import timezone

from devices.credentials import device_credential_issue, device_credential_revoke
from devices.models import Device
from ota_project.db import database_url
from tests.device_api.conftest import checkin_body

pytestmark = [pytest.mark.django_db(transaction=True)]

REPO_ROOT = Path(__file__).resolve().parents[2]
CHECKIN = "/device/v1/checkin/"
BOUND = 0.5


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post(port: int, auth: str) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a new connection: any worker
    try:
        body = json.dumps(checkin_body()).encode()
        connection.request("POST", CHECKIN, body, {"Authorization": auth, "Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _pids(log: Path, status: int) -> set[str]:
    return {line.split()[0] for line in log.read_text().splitlines() if line.endswith(f" {status}")}


def test_two_workers_answer_from_memory_honour_an_epoch_bump_and_write_back_at_exit(fleet, operator, tmp_path):
    device = Device.objects.filter(region=fleet["region"]).order_by("serial")[0]
    auth = f"Device {device.serial}:{device_credential_issue(actor=operator, device=device)}"
    port, access = _free_port(), tmp_path / "access.log"
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "ota_project.settings",
        "DATABASE_URL": database_url(),
        "OTA_DATA_DIR": str(tmp_path),
        "OTA_WEB_BIND": f"127.0.0.1:{port}",
        "OTA_WEB_WORKERS": "2",
        "OTA_WEB_THREADS": "2",
        "OTA_CACHE_URL": "",
        "TEMPORAL_ENABLED": "false",
        "OTA_DEVICE_AUTH": "secret",
        "OTA_DEVICE_RATE_PER_SECOND": "0",
        "OTA_UNAUTHENTICATED_RATE_PER_SECOND": "0",
        "OTA_CHECKIN_EPOCH_SECONDS": str(BOUND),
        "OTA_LAST_SEEN_FLUSH_SECONDS": "3600",  # written at exit only, in this test
    }
    argv = [
        str(Path(sys.executable).with_name("gunicorn")),
        "-c",
        str(REPO_ROOT / "ota_project" / "gunicorn_conf.py"),
        "--access-logfile",
        str(access),
        "--access-logformat",
        "%(p)s %(s)s",
    ]
    with (tmp_path / "gunicorn.log").open("ab") as out:
        server = subprocess.Popen(argv, env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _post(port, auth) == 200
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.2)
        while len(_pids(access, 200)) < 2:  # until both workers answered it (each remembers it then)
            assert time.monotonic() < deadline, "one worker answered every request"
            assert _post(port, auth) == 200
        device.refresh_from_db()
        written = device.last_seen_at
        time.sleep(0.3)
        for _ in range(10):
            assert _post(port, auth) == 200  # from memory: nothing written yet
        last_quiet = timezone.now()
        device.refresh_from_db()
        assert device.last_seen_at == written
        device_credential_revoke(actor=operator, device=device, reason="unit stolen")
        time.sleep(BOUND + 0.1)
        refused = 0
        while len(_pids(access, 401)) < 2:
            assert time.monotonic() < deadline, "one worker never answered after the revocation"
            assert _post(port, auth) == 401
            refused += 1
        assert refused >= 2
    finally:
        server.terminate()
        server.wait(timeout=60)
    device.refresh_from_db()
    # Both workers wrote what they answered from memory when they exited (nothing after the revocation).
    assert written is not None and device.last_seen_at is not None
    assert written < device.last_seen_at <= last_quiet
