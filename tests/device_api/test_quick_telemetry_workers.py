"""Telemetry on the short path under the real server: each of two gunicorn workers accepts a device's batches (its own
prepared identity statement), and both refuse the device at once after its credential is revoked (no memory)."""

from __future__ import annotations

import http.client
import json
import time

import pytest

from devices.credentials import device_credential_issue, device_credential_revoke
from devices.models import Device, TelemetryBatch, TelemetrySample
from ota_project.net import free_port
from tests.support.servers import answering_workers, gunicorn_device_workers, process_stop

pytestmark = [pytest.mark.django_db(transaction=True)]

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


def test_two_workers_accept_telemetry_and_refuse_a_revoked_credential_at_once(fleet, operator, settings, tmp_path):
    device = Device.objects.filter(region=fleet["region"]).order_by("serial")[0]
    auth = f"Device {device.serial}:{device_credential_issue(actor=operator, device=device)}"
    port, access = free_port(), tmp_path / "access.log"
    # The task runs in the worker that accepted the batch (the embedded default).
    server = gunicorn_device_workers(settings, tmp_path, port, CELERY_BROKER_URL="")
    batch = 0
    try:
        deadline = time.monotonic() + 60
        assert _post(port, auth, batch) == (202, {"accepted": 1, "batch_id": "w-0", "duplicate": False})
        while len(answering_workers(access, 202)) < 2:  # until both workers accepted a batch
            assert time.monotonic() < deadline, "one worker answered every request"
            batch += 1
            assert _post(port, auth, batch)[0] == 202
        assert _post(port, auth, batch) == (202, {"accepted": 1, "batch_id": f"w-{batch}", "duplicate": True})
        device_credential_revoke(actor=operator, device=device, reason="unit stolen")
        refused = 0
        while len(answering_workers(access, 401)) < 2:
            assert time.monotonic() < deadline, "one worker never answered after the revocation"
            assert _post(port, auth, batch + 1 + refused)[0] == 401
            refused += 1
    finally:
        process_stop(server, grace=60)
    assert TelemetryBatch.objects.filter(device=device).count() == batch + 1
    assert TelemetrySample.objects.filter(device=device).count() == batch + 1
