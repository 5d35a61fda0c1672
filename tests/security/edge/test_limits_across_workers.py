"""The device API's abuse limits are the whole server's (devices.edge.abuse): under a real two-worker gunicorn, one
credential hammering check-ins across both workers is let through at the configured rate and burst in total, not
twice that, and the rest of its region keeps being served; the swarm threshold counts the keys every server process
refused (two gunicorn processes on one database), with one swarm event and alert per window."""

from __future__ import annotations

import http.client
import json
import re
import threading
import time
from pathlib import Path

import pytest

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.credentials import device_credential_issue
from devices.models import Device, LimitedKey, SwarmWindow
from devices.services import region_update
from ota_project.alerts.models import Alert
from ota_project.net import free_port
from tests.device_api.conftest import checkin_body
from tests.support.servers import gunicorn_env, gunicorn_start, process_stop

pytestmark = pytest.mark.django_db(transaction=True)

CHECKIN = "/device/v1/checkin/"
RATE, BURST = 1.0, 10
HAMMER_THREADS = 6
# Each access log line: the pid of the worker that answered (gunicorn writes it as <pid>), the status, the path.
ACCESS_LINE = re.compile(r"^<(\d+)> (\d{3}) (\S+)$", re.MULTILINE)


def _post(port: int, authorization: str, body: dict[str, object]) -> int:
    """One check-in on a connection of its own (so the listening socket hands it to either worker)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        headers = {"Authorization": authorization, "Content-Type": "application/json"}
        connection.request("POST", CHECKIN, body=json.dumps(body).encode(), headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def _access(log_text: str, path: str) -> list[tuple[int, int]]:
    return [(int(pid), int(status)) for pid, status, seen in ACCESS_LINE.findall(log_text) if seen == path]


def _page(port: int) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/login/")
        connection.getresponse().read()
    finally:
        connection.close()


def _until_both_workers_serve(port: int, access_log: Path) -> None:
    """Pages (not the device API: no bucket is touched) until both workers have answered one."""
    deadline = time.monotonic() + 90
    while len({pid for pid, _ in _access(access_log.read_text() if access_log.exists() else "", "/login/")}) < 2:
        assert time.monotonic() < deadline, "both workers never answered"
        pages = [threading.Thread(target=_page, args=(port,)) for _ in range(6)]
        for page in pages:
            page.start()
        for page in pages:
            page.join(60)


def test_one_credential_hammering_both_workers_gets_the_configured_rate_and_its_region_is_served(
    fleet, operator, settings, tmp_path
):
    region = fleet["region"]
    # Without the limit the hammer alone would spend the region's budget (each worker counts it in its own memory).
    region_update(actor=operator, region=region, changes={"max_checkins_per_window": 20})
    hammer, *rest = Device.objects.filter(region=region).order_by("serial")[:6]
    credentials = {
        device.serial: f"Device {device.serial}:{device_credential_issue(actor=operator, device=device)}"
        for device in [hammer, *rest]
    }
    port, access_log = free_port(), tmp_path / "access.log"
    env = gunicorn_env(
        settings,
        OTA_DEVICE_AUTH="secret",
        OTA_WEB_WORKERS="7",  # overridden by the command line's --workers: the master exports what it runs
        OTA_WEB_THREADS="2",
        OTA_WEB_ACCESS_LOG=str(access_log),
        OTA_DEVICE_RATE_PER_SECOND=str(RATE),
        OTA_DEVICE_RATE_BURST=str(BURST),
        OTA_DEVICE_BUDGET_WINDOW_SECONDS="600",
    )
    # A gthread worker accepts every connection it can; two connections at most each make the two workers share a
    # burst of concurrent clients (as a loaded server does), so the hammer reaches both.
    options = ("--workers", "2", "--worker-connections", "2", "--access-logformat", "%(p)s %(s)s %(U)s")
    server = gunicorn_start(env, tmp_path / "gunicorn.log", port, *options)
    try:
        _until_both_workers_serve(port, access_log)
        statuses: list[int] = []
        lock = threading.Lock()

        def hammer_once(n: int) -> None:
            status = _post(port, credentials[hammer.serial], checkin_body(boot_count=n))
            with lock:
                statuses.append(status)

        # Rounds of concurrent check-ins until each worker has refused the hammer (it spent that worker's share).
        started = time.monotonic()
        while len({pid for pid, status in _access(access_log.read_text(), CHECKIN) if status == 429}) < 2:
            assert time.monotonic() - started < 90 and len(statuses) < 600, _access(access_log.read_text(), CHECKIN)
            round_ = [threading.Thread(target=hammer_once, args=(len(statuses) + i,)) for i in range(HAMMER_THREADS)]
            for thread in round_:
                thread.start()
            for thread in round_:
                thread.join(60)
        elapsed = time.monotonic() - started
        served = statuses.count(200)
        assert set(statuses) == {200, 429}
        # The whole server let through at most the configured burst plus the configured rate over the time it took
        # (each worker: BURST/2 at once and RATE/2 per second), and at least the burst (each worker spent its half);
        # per-worker limits would have let through twice the burst before refusing anything.
        assert BURST <= served <= BURST + RATE * elapsed, (served, elapsed)
        assert {pid for pid, status in _access(access_log.read_text(), CHECKIN) if status == 200} == {
            pid for pid, status in _access(access_log.read_text(), CHECKIN) if status == 429
        }
        # The rest of the region is served: the hammer spent its limit, not the region's budget.
        for device in rest:
            assert _post(port, credentials[device.serial], checkin_body()) == 200
    finally:
        process_stop(server)


def _refuse(port: int, serial: str) -> list[int]:
    """A forged credential checks in until the server refuses it for its rate (its first request: 401)."""
    statuses = [_post(port, f"Device {serial}:forged", checkin_body()) for _ in range(3)]
    assert statuses[-1] == 429, statuses
    return statuses


def test_the_swarm_threshold_counts_keys_refused_by_two_server_processes_and_alerts_once(settings, tmp_path):
    # Two gunicorn processes on one database, each refusing fewer keys than the threshold: together they reach it.
    env = gunicorn_env(
        settings,
        OTA_DEVICE_AUTH="secret",
        OTA_WEB_THREADS="4",
        OTA_DEVICE_RATE_PER_SECOND="0.01",
        OTA_DEVICE_RATE_BURST="1",
        OTA_DEVICE_SWARM_THRESHOLD="4",
        OTA_DEVICE_SWARM_WINDOW_SECONDS="3600",
    )
    ports = [free_port(), free_port()]
    servers = [
        gunicorn_start(env, tmp_path / f"gunicorn-{n}.log", port, "--workers", "1") for n, port in enumerate(ports)
    ]
    try:
        for n, port in enumerate(ports):
            _refuse(port, f"FORGED-{n}-0")
        assert LimitedKey.objects.count() == 2  # each key once for the server
        assert not SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_SWARM).exists()
        # Two more keys at each process, all at once: each process refused three (under the threshold), the server
        # six; both may see the threshold crossed at the same moment: one swarm event and one alert.
        threads = [
            threading.Thread(target=_refuse, args=(port, f"FORGED-{n}-{key}"))
            for key in range(1, 3)
            for n, port in enumerate(ports)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        (swarm,) = SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_SWARM)
        assert swarm.count == 1
        (alert,) = Alert.objects.all()
        assert alert.kind == "security.device_swarm" and alert.evidence["keys_over_limit"] >= 4
        assert SwarmWindow.objects.count() == 1
    finally:
        for server in servers:
            process_stop(server)
