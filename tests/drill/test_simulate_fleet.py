"""`manage.py simulate_fleet`: the small continuous fleet of `make run` checks in through nginx's device port with
certificates provisioned by the certificate service (mutual TLS, pinned server key), keeps them across restarts and
stops cleanly on SIGINT."""

from __future__ import annotations

import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from django.core.management import call_command
from django.db import close_old_connections

from approvals.audit.models import DecisionRecord
from devices.models import Device
from tests.factories import DeviceFactory
from tests.temporal_support import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)


def fleet_env(settings) -> dict[str, str]:
    """The subprocess sees this test's database, token (it signs certificates there), device CA and proxy secret."""
    return subprocess_env(
        settings,
        SOFTHSM2_CONF=str(settings.SOFTHSM2_CONF),
        OTA_PKCS11_TOKEN=settings.PKCS11_TOKEN,
        OTA_PKCS11_PIN_FILE=str(settings.PKCS11_PIN_FILE),
        OTA_PKCS11_LABEL_PREFIX=settings.PKCS11_LABEL_PREFIX,
        OTA_DEVICE_PKI_DIR=str(settings.DEVICE_PKI_DIR),
        OTA_DEVICE_PROXY_SECRET_FILE=str(settings.DEVICE_PROXY_SECRET_FILE),
        OTA_DEVICE_AUTH="certificate",
    )


@pytest.fixture
def device_port(live_server, settings, tmp_path) -> Iterator[str]:
    """nginx with mutual TLS in front of the live server (certificate mode), as `make run` runs it."""
    settings.OTA_DEVICE_AUTH = "certificate"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    upstream = urlsplit(live_server.url).netloc
    nginx_dir = tmp_path / "nginx"
    call_command(
        "devices", "nginx-config", "--listen", f"127.0.0.1:{port}", "--upstream", upstream, "--out", str(nginx_dir)
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    argv = [nginx, "-c", str(nginx_dir / "nginx.conf"), "-p", str(nginx_dir), "-e", str(nginx_dir / "error.log")]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert process.poll() is None and time.monotonic() < deadline, Path(nginx_dir / "error.log").read_text()
                time.sleep(0.05)
        yield f"https://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)


def run_fleet(server, settings, state_dir, *, until, timeout: float = 60.0) -> str:
    argv = [sys.executable, "manage.py", "simulate_fleet", "--devices", "3", "--server", server]
    argv += ["--state-dir", str(state_dir)]
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=fleet_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None  # piped
    try:
        deadline = time.monotonic() + timeout
        while not until():
            assert process.poll() is None, process.stdout.read()
            assert time.monotonic() < deadline, "the simulated fleet never checked in"
            time.sleep(0.3)
            close_old_connections()
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    return output


def test_simulated_fleet_checks_in_over_mutual_tls_and_keeps_its_certificates_across_restarts(
    device_port, settings, operator, tmp_path
):
    DeviceFactory.create_batch(3, installed_version="1.0.0", installed_release_counter=1)
    state_dir = tmp_path / "fleet"

    def all_seen() -> bool:
        return Device.objects.filter(last_seen_at__isnull=False).count() == 3

    output = run_fleet(device_port, settings, state_dir, until=all_seen)
    assert "simulate_fleet: 3 devices checking in" in output and "simulate_fleet: stopped" in output
    (issued,) = DecisionRecord.objects.filter(action="devices.certificate_issue")  # one batch of three
    assert issued.after is not None and len(issued.after["certificates"]) == 3
    for device in Device.objects.all():
        identity = state_dir / "identities" / device.serial
        assert stat.S_IMODE((identity / "device-key.pem").stat().st_mode) == 0o600
        assert device.certificate_fingerprint == issued.after["certificates"][device.serial]["fingerprint"]
        assert (state_dir / device.serial / "state.json").exists()
        assert device.reported_version == "1.0.0"

    first_seen: dict[str, datetime] = {}
    for serial, last_seen_at in Device.objects.values_list("serial", "last_seen_at"):
        assert last_seen_at is not None  # every unit has checked in
        first_seen[serial] = last_seen_at

    def seen_again() -> bool:
        return all(d.last_seen_at is not None and d.last_seen_at > first_seen[d.serial] for d in Device.objects.all())

    run_fleet(device_port, settings, state_dir, until=seen_again)
    assert (
        DecisionRecord.objects.filter(action__in=["devices.certificate_issue", "devices.certificate_renew"]).count()
        == 1
    )
    # kept, not reissued


def test_without_an_operator_it_waits_issues_nothing_and_stops_on_sigint(live_server, settings, tmp_path):
    DeviceFactory.create_batch(2)
    argv = [sys.executable, "manage.py", "simulate_fleet", "--devices", "2", "--state-dir", str(tmp_path / "f")]
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=fleet_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert process.stdout is not None  # piped
    try:
        line = ""
        while "simulate_fleet:" not in line:  # skip what Django apps print at start-up
            line = process.stdout.readline()
            assert line, "the command ended without a word"
        assert "simulate_fleet: waiting: no active operator exists to issue credentials" in line
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "simulate_fleet: stopped" in output
    assert not DecisionRecord.objects.filter(action="devices.certificate_issue").exists()
    assert not Device.objects.filter(last_seen_at__isnull=False).exists()
