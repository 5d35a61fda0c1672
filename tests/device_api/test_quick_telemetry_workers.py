"""Telemetry on the short path under the real server: each of two gunicorn workers accepts a device's batches (its own
prepared identity statement), and both refuse the device at once after its credential is revoked (no memory)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devices.credentials import device_credential_issue, device_credential_revoke
from devices.models import Device, TelemetryBatch, TelemetrySample
from ota_project.db import database_url
from tests.device_api.test_quiet_checkin_workers import _free_port, _pids

pytestmark = [pytest.mark.django_db(transaction=True)]

REPO_ROOT = Path(__file__).resolve().parents[2]
TELEMETRY = "/device/v1/telemetry/"


def _post(port: int, auth: str, batch: int) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a new connection: any worker
    try:
        sample = {"reported_at": f"2026-01-05T10:00:{batch % 60:02d}Z", "boot_time_s": batch % 3600}
        body = json.dumps({"batch_id": f"w-{batch}", "samples": [sample]}).encode()
        connection.request("POST", TELEMETRY, body, {"Authorization": auth, "Content-Type": "application/json"})
        response = connection.getresponse()
        if response.status == 202:  # answered on the short path: XFrameOptionsMiddleware never saw it
            assert response.getheader("X-Frame-Options") is None
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_two_workers_accept_telemetry_and_refuse_a_revoked_credential_at_once(fleet, operator, tmp_path):
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
        "CELERY_BROKER_URL": "",  # the task runs in the worker that accepted the batch (the embedded default)
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
    batch = 0
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                assert _post(port, auth, batch) == (202, {"accepted": 1, "batch_id": "w-0", "duplicate": False})
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.2)
        while len(_pids(access, 202)) < 2:  # until both workers accepted a batch
            assert time.monotonic() < deadline, "one worker answered every request"
            batch += 1
            assert _post(port, auth, batch)[0] == 202
        assert _post(port, auth, batch) == (202, {"accepted": 1, "batch_id": f"w-{batch}", "duplicate": True})
        device_credential_revoke(actor=operator, device=device, reason="unit stolen")
        refused = 0
        while len(_pids(access, 401)) < 2:
            assert time.monotonic() < deadline, "one worker never answered after the revocation"
            assert _post(port, auth, batch + 1 + refused)[0] == 401
            refused += 1
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert TelemetryBatch.objects.filter(device=device).count() == batch + 1
    assert TelemetrySample.objects.filter(device=device).count() == batch + 1
