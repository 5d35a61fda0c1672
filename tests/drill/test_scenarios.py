"""Every drill scenario at a small size on the real stack: Temporal dev server, worker and gunicorn as
subprocesses, the fault proxy and the agents in one asyncio loop, PostgreSQL. The reports are checked against
the acceptance outcomes of issue #4, and against the database where it tells the same story another way."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.conf import settings

from approvals.audit.models import DecisionRecord
from devices.models import Device
from rollouts.choices import DeploymentKind, DeploymentStatus
from rollouts.drill.run import DrillError, DrillOptions, validate_options
from rollouts.models import Deployment
from tests.temporal_support import REPO_ROOT, subprocess_env

pytestmark = pytest.mark.django_db(transaction=True)

ZEROS = (
    "lost_deployments",
    "duplicated_deployments",
    "bricked_devices",
    "agent_errors",
    "updated_disagreements",
    "untrusted_refusals",
    "unverified_installs",
)


def assert_clean(report: dict) -> None:
    assert {key: report[key] for key in ZEROS} == dict.fromkeys(ZEROS, 0)
    assert report["audit_chain_ok"] is True and report["devices_still_busy"] == 0
    # Full verification on every agent: each device on the new release verified a signed offer for it first.
    assert report["verified_offers"] >= report["updated"]
    assert [check for check in report["checks"] if not check["ok"]] == []


def drill_devices(report: dict):
    return Device.objects.filter(serial__startswith=f"DRILL-{report['run_id']}-")


def test_healthy_drill_from_the_command_line_updates_every_device_and_prints_one_json_object(
    temporal_settings, temporal_dev_server
):
    env = subprocess_env(
        temporal_settings,
        OTA_ARTIFACT_ROOT=str(settings.ARTIFACT_ROOT),
        OTA_EVIDENCE_ROOT=str(settings.EVIDENCE_ROOT),
        OTA_AUDIT_SIGNING_KEY=str(settings.AUDIT_SIGNING_KEY_PATH),
    )
    argv = [sys.executable, "manage.py", "fleet_drill", "--scenario", "healthy", "--devices", "24", "--seed", "3"]
    argv += ["--json", "--web-processes", "1", "--temporal-address", temporal_dev_server.address, "--timeout", "150"]
    done = subprocess.run(argv, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)  # exactly one JSON object: anything else on stdout would not parse
    assert report["scenario"] == "healthy" and report["devices"] == 24
    assert report["rollout_status"] == "completed" and report["halted"] is False
    assert report["waves_completed"] == report["waves_planned"] == 2
    assert report["updated"] == 24 and report["failed"] == report["timed_out"] == report["rolled_back"] == 0
    assert report["bytes_downloaded"] == report["bytes_needed"] > 0
    assert report["telemetry_samples"] >= 24
    assert report["verified_offers"] >= 24  # every vehicle verified both repositories before it fetched the image
    assert_clean(report)
    new_version = report["new_release"]
    assert drill_devices(report).filter(installed_version=new_version).count() == 24


def test_bad_release_halts_in_the_pilot_and_every_exposed_device_ends_on_a_good_image(drill):
    report = drill("bad-release", 40)
    assert report["halted"] is True and report["halted_wave"] == 0 and report["waves_completed"] == 0
    assert report["rollout_status"] == "rolled_back"
    assert report["exposed_to_bad_release"] >= 1 and report["fell_back_on_device"] >= 1
    assert report["bad_release_installed_outside_pilot"] == 0
    assert report["exposed_ending_on_bad_release"] == 0 and report["updated"] == 0
    assert report["seconds_to_halt"] is not None and report["seconds_to_restore"] is not None
    assert_clean(report)
    updates = Deployment.objects.filter(rollout_id=report["rollout_id"], kind=DeploymentKind.UPDATE)
    assert not updates.exclude(wave__index=0).exists()  # the fleet never got the release
    new_version = report["new_release"]
    assert not drill_devices(report).filter(installed_version=new_version).exists()


def test_a_silent_regression_is_halted_in_the_pilot_by_its_health_gate(drill):
    report = drill("silent-regression", 120)
    # Every pilot installed and booted the image; only the signal said it was worse.
    assert report["deployments_succeeded"] == report["exposed_to_bad_release"] >= 10
    assert report["fell_back_on_device"] == 0 and report["failed"] == 0
    assert report["halted"] is True and report["halted_wave"] == 0 and report["rollout_status"] == "rolled_back"
    assert report["bad_release_installed_outside_pilot"] == 0 and report["exposed_ending_on_bad_release"] == 0
    signals = report["pilot_signal_gate"]
    assert signals["verdict"] == "regression" and report["signal_gate_records"] == 1
    [regressed] = [c for c in signals["comparisons"] if c["verdict"] == "regression"]
    assert regressed["indicator"] == "gps_fix_s" and regressed["candidate"] > 2 * regressed["baseline"]
    assert report["checks_passed"] is True
    assert_clean(report)
    updates = Deployment.objects.filter(rollout_id=report["rollout_id"], kind=DeploymentKind.UPDATE)
    assert not updates.exclude(wave__index=0).exists()  # the fleet never got the release
    assert DecisionRecord.objects.filter(
        object_id=str(report["rollout_id"]), action="rollout.signal_gate", after__verdict="regression"
    ).exists()


def test_flaky_network_still_updates_every_device_and_resumes_instead_of_downloading_again(drill):
    report = drill("flaky-network", 30)
    network = report["network"]
    assert network["dropped"] > 0 and network["cut"] > 0
    assert report["resumed_downloads"] >= 1
    assert report["updated"] == 30 and report["rollout_status"] == "completed"
    assert report["bytes_downloaded"] <= 1.10 * report["bytes_needed"]
    assert_clean(report)


def test_power_loss_during_install_bricks_nothing_and_the_devices_finish_their_update(drill):
    report = drill("power-loss", 30)
    assert report["power_losses"] == 3
    assert report["updated"] == 30 and report["rollout_status"] == "completed"
    assert_clean(report)


def test_offline_devices_time_out_are_listed_and_fail_only_within_the_plan(drill):
    report = drill("offline-devices", 30)
    assert report["offline"] == len(report["offline_serials"]) >= 1
    assert report["offline_never_seen_by_server"] == report["offline"]
    assert report["timed_out"] == report["offline"] and report["failed"] == 0
    assert report["rollout_status"] == "completed"  # 1 in 30 is within the plan's 10% failure threshold
    assert report["updated"] == 30 - report["offline"]
    timed_out = Deployment.objects.filter(rollout_id=report["rollout_id"], status=DeploymentStatus.TIMED_OUT)
    assert sorted(timed_out.values_list("device__serial", flat=True)) == report["offline_serials"]
    assert_clean(report)


def test_operator_rollback_returns_every_updated_device_to_the_old_release(drill):
    report = drill("abort-rollback", 30)
    assert report["rollout_status"] == "rolled_back"
    assert report["rollback_deployments"] == report["rollback_deployments_succeeded"] >= 3
    assert report["updated"] == 0 and report["seconds_to_restore"] is not None
    assert_clean(report)
    operator = DecisionRecord.objects.filter(action="rollout.rollback", object_id=str(report["rollout_id"]))
    assert operator.exists()
    new_version = report["new_release"]
    assert not drill_devices(report).filter(installed_version=new_version).exists()


@pytest.mark.django_db(transaction=False)
@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scenario": "meteor-strike"}, "unknown scenario"),
        ({"devices": 5}, "--devices"),
        ({"image_bytes": 10}, "--image-bytes"),
        ({"web_processes": 0}, "--web-processes"),
    ],
)
def test_bad_options_are_refused_with_a_clear_message(changes, message):
    with pytest.raises(DrillError, match=message):
        validate_options(DrillOptions(**{"scenario": "healthy", "devices": 20, **changes}))
