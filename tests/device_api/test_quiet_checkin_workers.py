"""Quiet check-ins under the real server: two gunicorn workers (the project's configuration) each answer a device
from memory, both refuse it within OTA_CHECKIN_EPOCH_SECONDS of its credential's revocation (the database's epoch,
not a message between processes), and what they answered from memory is written when they exit."""

from __future__ import annotations

import http.client
import json
import time

import pytest
from django.utils import timezone

from devices.credentials import device_credential_issue, device_credential_revoke
from devices.models import Device
from ota_project.net import free_port
from tests.device_api.conftest import checkin_body
from tests.support.servers import answering_workers, gunicorn_device_workers, process_stop

pytestmark = [pytest.mark.django_db(transaction=True)]

CHECKIN = "/device/v1/checkin/"
BOUND = 0.5


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


def test_two_workers_answer_from_memory_honour_an_epoch_bump_and_write_back_at_exit(
    fleet, operator, settings, tmp_path
):
    device = Device.objects.filter(region=fleet["region"]).order_by("serial")[0]
    auth = f"Device {device.serial}:{device_credential_issue(actor=operator, device=device)}"
    port, access = free_port(), tmp_path / "access.log"
    server = gunicorn_device_workers(
        settings,
        tmp_path,
        port,
        OTA_CHECKIN_EPOCH_SECONDS=str(BOUND),
        OTA_LAST_SEEN_FLUSH_SECONDS="3600",  # written at exit only, in this test
    )
    try:
        deadline = time.monotonic() + 60
        assert _post(port, auth) == 200
        while len(answering_workers(access, 200)) < 2:  # until both workers answered it (each remembers it then)
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
        while len(answering_workers(access, 401)) < 2:
            assert time.monotonic() < deadline, "one worker never answered after the revocation"
            assert _post(port, auth) == 401
            refused += 1
        assert refused >= 2
    finally:
        process_stop(server, grace=60)  # SIGTERM: each worker writes what it buffered as it exits
    device.refresh_from_db()
    # Both workers wrote what they answered from memory when they exited (nothing after the revocation).
    assert written is not None and device.last_seen_at is not None
    assert written < device.last_seen_at <= last_quiet
