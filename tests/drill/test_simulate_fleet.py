"""`manage.py simulate_fleet`: the small continuous fleet of `make run` checks in through the device API with
credentials issued by the credential service, keeps them across restarts and stops cleanly on SIGINT."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
import time
from datetime import datetime

import pytest
from django.db import close_old_connections

from approvals.audit.models import DecisionRecord
from devices.models import Device
from tests.factories import DeviceFactory
from tests.temporal_support import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)


def run_fleet(live_server, settings, state_dir, *, until, timeout: float = 40.0) -> str:
    argv = [sys.executable, "manage.py", "simulate_fleet", "--devices", "3", "--server", live_server.url]
    argv += ["--state-dir", str(state_dir)]
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=subprocess_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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


def test_simulated_fleet_checks_in_and_keeps_its_credentials_across_restarts(live_server, settings, operator, tmp_path):
    DeviceFactory.create_batch(3, installed_version="1.0.0", installed_release_counter=1)
    state_dir = tmp_path / "fleet"

    def all_seen() -> bool:
        return Device.objects.filter(last_seen_at__isnull=False).count() == 3

    output = run_fleet(live_server, settings, state_dir, until=all_seen)
    assert "simulate_fleet: 3 devices checking in" in output and "simulate_fleet: stopped" in output
    issued = DecisionRecord.objects.filter(action="devices.credential_issue").count()
    assert issued == 3
    credentials = state_dir / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    for device in Device.objects.all():
        assert (state_dir / device.serial / "state.json").exists()
        assert device.reported_version == "1.0.0"

    first_seen: dict[str, datetime] = {}
    for serial, last_seen_at in Device.objects.values_list("serial", "last_seen_at"):
        assert last_seen_at is not None  # every unit has checked in
        first_seen[serial] = last_seen_at

    def seen_again() -> bool:
        return all(d.last_seen_at is not None and d.last_seen_at > first_seen[d.serial] for d in Device.objects.all())

    run_fleet(live_server, settings, state_dir, until=seen_again)
    assert DecisionRecord.objects.filter(action="devices.credential_issue").count() == issued  # kept, not reissued


def test_without_an_operator_it_waits_issues_nothing_and_stops_on_sigint(live_server, settings, tmp_path):
    DeviceFactory.create_batch(2)
    argv = [sys.executable, "manage.py", "simulate_fleet", "--devices", "2", "--state-dir", str(tmp_path / "f")]
    process = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=subprocess_env(settings), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
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
    assert not DecisionRecord.objects.filter(action="devices.credential_issue").exists()
    assert not Device.objects.filter(last_seen_at__isnull=False).exists()
