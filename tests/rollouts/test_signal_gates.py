"""Health gates on post-update signals: a significant regression halts the wave, too little data holds it, a
regression within tolerance lets it promote; the verdict's numbers land on the wave, in the records and the page."""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from approvals import services as change_services
from approvals.audit.models import DecisionRecord
from approvals.plans import HealthGate
from devices import telemetry
from devices.models import Device, Tag
from devices.telemetry_aggregates import INDICATORS, Summary
from ota_project.errors import DomainError
from rollouts import rollout_services as steps
from rollouts.demo.playback import HAPPY
from rollouts.deployment_services import Report, deployment_report
from rollouts.health import wave_plan_of
from rollouts.models import Deployment, Rollout, Wave
from rollouts.signal_gates import deployment_attributions
from rollouts.signal_policy import signal_compare, signal_verdict
from tests.support.rollouts import end_soak, expect_offer
from workflows import policy
from workflows.types import PhaseChange, SignalVerdict, Verdict

pytestmark = pytest.mark.django_db

_WAVE = {"soak_seconds": 60, "min_sample": 1, "success_threshold": 0.9, "failure_threshold": 0.1}
GPS_GATE = {"indicator": "gps_fix_s", "tolerance": 0.1, "significance": 0.05, "min_sample": 10}


def _plan(*gates: dict) -> dict:
    return {
        "waves": [
            {"name": "pilot", "cohort": {"kind": "pilot"}, "promotion": "auto", **_WAVE},
            {"name": "fleet", "cohort": {"kind": "percent", "value": 100}, "promotion": "auto", **_WAVE},
        ],
        "abort_policy": "halt",
        "monitor_interval_seconds": 1,
        "health_gates": list(gates),
    }


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def start(requester, change_fields, cab_member, cab_member_2, operator):
    def started(*gates: dict) -> Rollout:
        # 16 pilots of tcu-4g-r2 (the fleet fixture tags 2): a pilot large enough to judge on its own.
        pilot = Tag.objects.get(name="pilot")
        for device in Device.objects.filter(hardware_model__name="tcu-4g-r2").exclude(tags=pilot)[:14]:
            device.tags.add(pilot)
        change = change_services.change_create(actor=requester, **{**change_fields, "rollout_plan": _plan(*gates)})
        change = change_services.change_submit(actor=requester, change=change)
        change_services.approval_grant(actor=cab_member, change=change, revision=1)
        change = change_services.approval_grant(actor=cab_member_2, change=change, revision=1)
        rollout = steps.rollout_start(actor=operator, change=change)
        steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
        return rollout

    return started


def _drive(deployment: Deployment) -> None:
    for seq, status in enumerate(HAPPY, start=deployment.last_seq + 1):
        report = (
            Report(seq, status, booted_version=deployment.release.version, health_passed=True)
            if status == "succeeded"
            else Report(seq, status)
        )
        deployment = deployment_report(device=deployment.device, deployment_id=deployment.pk, report=report).deployment


def _send(device: Device, values: list[int], *, deployment: Deployment | None = None, key: str = "gps_fix_s") -> None:
    """The device's agent reports samples (through the intake, attributed as the device API attributes them)."""
    now = timezone.now()
    samples = [
        {"deployment_id": deployment.pk if deployment else None, "reported_at": now - timedelta(minutes=i), key: v}
        for i, v in enumerate(values)
    ]
    named = deployment_attributions(device=device, deployment_ids=[deployment.pk]) if deployment else {}
    accepted = telemetry.telemetry_batch_accept(device=device, samples=samples, deployments=named)
    telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk)


def _normal(mean: float, n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [max(0, round(rng.gauss(mean, 4))) for _ in range(n)]


def _baseline(rollout: Rollout, mean: float = 30) -> None:
    """Every tcu-4g-r2 unit, still on the old release, reports its GPS time to fix three times (boot samples)."""
    for index, device in enumerate(Device.objects.filter(hardware_model__name="tcu-4g-r2").order_by("pk")):
        _send(device, _normal(mean, 3, seed=index))


def _pilots_update(rollout: Rollout, mean: float, reporting: int | None = None) -> None:
    """Every pilot device installs the release; `reporting` of them (all: None) report their post-update GPS time to
    fix, each one sample naming its deployment."""
    deployments = Deployment.objects.filter(rollout=rollout, wave__index=0).order_by("pk")
    for index, deployment in enumerate(deployments):
        _drive(expect_offer(deployment.device))
        if reporting is None or index < reporting:
            _send(deployment.device, _normal(mean, 1, seed=100 + index), deployment=deployment)


def _records(rollout: Rollout, action: str) -> list[DecisionRecord]:
    return list(DecisionRecord.objects.filter(object_type="rollout", object_id=str(rollout.pk), action=action))


def _verdict(rollout: Rollout, *, soak_done: bool) -> tuple[str, dict[str, Any]]:
    """The wave's health step as the workflow runs it, the verdict the workflow's policy gives on it, and the health
    gates' reading stored on the wave ({} when there is none)."""
    health = steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    signals = Wave.objects.get(rollout=rollout, index=0).signals
    verdict = policy.wave_verdict(health, wave_plan_of(rollout.approved_plan.waves[0]), soak_done=soak_done)
    return verdict, signals or {}


def _after(record: DecisionRecord) -> dict[str, Any]:
    assert isinstance(record.after, dict)
    return record.after


def test_a_planted_regression_with_an_adequate_sample_halts_the_wave(start):
    rollout = start(GPS_GATE)
    _baseline(rollout, mean=30)
    _pilots_update(rollout, mean=60)  # GPS fix twice as slow on the new image

    verdict, signals = _verdict(rollout, soak_done=False)  # mid-soak: a regression halts at once, like failures
    assert verdict == Verdict.FAIL
    assert signals["verdict"] == "regression"
    [comparison] = signals["comparisons"]
    assert comparison["hardware_model"] == "tcu-4g-r2" and comparison["test"] == "welch"
    assert (comparison["candidate_n"], comparison["baseline_n"]) == (16, 60)
    assert comparison["candidate"] > 55 and comparison["baseline"] < 35 and comparison["p_value"] < 1e-6
    [record] = _records(rollout, "rollout.signal_gate")
    assert _after(record)["verdict"] == "regression" and _after(record)["comparisons"][0]["p_value"] < 1e-6
    assert "GPS time to fix on tcu-4g-r2" in record.reason
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)  # the next tick records nothing new
    assert len(_records(rollout, "rollout.signal_gate")) == 1
    end_soak(rollout, 0)
    with pytest.raises(DomainError):  # a forged promotion is refused on the database's numbers
        steps.wave_promote(rollout_id=rollout.pk, wave_index=0)
    assert not _records(rollout, "rollout.promote_auto")


def test_a_device_flooding_samples_for_its_deployment_counts_once(start):
    rollout = start(GPS_GATE)
    _baseline(rollout, mean=30)
    _pilots_update(rollout, mean=60)
    flooder = Deployment.objects.filter(rollout=rollout, wave__index=0).order_by("pk").first()
    assert flooder is not None
    for _ in range(3):  # 1,500 "perfect" fixes to mask the regression
        _send(flooder.device, list(range(1, 501)), deployment=flooder)
    verdict, signals = _verdict(rollout, soak_done=False)
    assert verdict == Verdict.FAIL and signals["comparisons"][0]["candidate_n"] == 16


def test_the_same_regression_on_a_small_sample_holds_and_never_promotes(start):
    rollout = start(GPS_GATE)
    _baseline(rollout, mean=30)
    _pilots_update(rollout, mean=60, reporting=4)  # 4 samples, 10 needed
    verdict, signals = _verdict(rollout, soak_done=False)
    assert verdict == Verdict.CONTINUE
    end_soak(rollout, 0)
    verdict, signals = _verdict(rollout, soak_done=True)
    assert verdict == Verdict.INCONCLUSIVE  # every device succeeded, but the signals cannot vouch for the release
    assert signals["verdict"] == "inconclusive" and "too little data" in signals["reason"]
    with pytest.raises(DomainError):
        steps.wave_promote(rollout_id=rollout.pk, wave_index=0)
    assert not _records(rollout, "rollout.signal_gate")
    # The workflow projects the inconclusive gate: the hold's record carries the gates' numbers.
    steps.rollout_phase(
        PhaseChange(rollout.pk, "awaiting_promotion", 0, gate="inconclusive", reason="held by the health gates")
    )
    [hold] = _records(rollout, "rollout.hold")
    assert _after(hold)["signals"]["verdict"] == "inconclusive"
    assert _after(hold)["signals"]["comparisons"][0]["candidate_n"] == 4


def test_a_regression_within_tolerance_promotes_with_its_evidence(start):
    rollout = start(GPS_GATE)
    _baseline(rollout, mean=30)
    _pilots_update(rollout, mean=31)  # about 3 % slower, 10 % allowed
    end_soak(rollout, 0)
    verdict, signals = _verdict(rollout, soak_done=True)
    assert verdict == Verdict.PASS and signals["verdict"] == "pass"
    assert steps.wave_promote(rollout_id=rollout.pk, wave_index=0) is True
    [record] = _records(rollout, "rollout.promote_auto")
    assert _after(record)["signals"]["verdict"] == "pass"
    assert _after(record)["signals"]["comparisons"][0]["tolerance"] == 0.1


def test_a_plan_without_gates_is_judged_on_install_outcomes_only(start):
    rollout = start()
    _pilots_update(rollout, mean=90)
    end_soak(rollout, 0)
    verdict, signals = _verdict(rollout, soak_done=True)
    assert verdict == Verdict.PASS and signals == {}
    assert Wave.objects.get(rollout=rollout, index=0).signals is None


def test_no_telemetry_from_the_wave_is_inconclusive(start):
    rollout = start(GPS_GATE)
    _baseline(rollout)
    for deployment in Deployment.objects.filter(rollout=rollout, wave__index=0):
        _drive(expect_offer(deployment.device))
    end_soak(rollout, 0)
    verdict, signals = _verdict(rollout, soak_done=True)
    assert verdict == Verdict.INCONCLUSIVE
    assert signals["comparisons"][0]["candidate_n"] == 0


def test_the_api_gives_each_waves_signal_verdict(start, client_for, auditor):
    rollout = start(GPS_GATE)
    _baseline(rollout, mean=30)
    _pilots_update(rollout, mean=60)
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    waves = client_for(auditor).get(f"/api/v1/rollouts/{rollout.pk}/").json()["waves"]
    assert waves[0]["signals"]["verdict"] == "regression"
    assert waves[0]["signals"]["comparisons"][0]["indicator"] == "gps_fix_s"
    assert waves[1]["signals"] is None  # not opened yet


def test_the_dashboard_shows_the_verdict_and_its_numbers(start, operator):
    rollout = start(GPS_GATE)
    _baseline(rollout, mean=30)
    _pilots_update(rollout, mean=60)
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    browser = Client()
    browser.force_login(operator)
    page = browser.get(f"/rollouts/{rollout.pk}/").content.decode()
    assert 'data-testid="signal-gates"' in page
    assert "Regression: the wave halts" in page
    assert "GPS time to fix" in page and "tcu-4g-r2" in page and "n=16" in page and "n=60" in page
    assert "Welch" in page and "10 %" in page  # the test used and the plan's tolerance


# --- the pure comparison ---------------------------------------------------------------------------------------


def _summary(values: list[int]) -> Summary:
    return Summary(len(values), sum(values), sum(v * v for v in values))


def test_welch_gate_halts_only_beyond_the_tolerance():
    gate = HealthGate("gps_fix_s", 0.1, 0.05, 20)
    baseline = _summary(_normal(30, 400, seed=1))
    worse = signal_compare(
        INDICATORS["gps_fix_s"], gate, hardware_model="m", baseline=baseline, candidate=_summary(_normal(36, 60, 2))
    )
    within = signal_compare(
        INDICATORS["gps_fix_s"], gate, hardware_model="m", baseline=baseline, candidate=_summary(_normal(31, 60, 3))
    )
    small = signal_compare(
        INDICATORS["gps_fix_s"], gate, hardware_model="m", baseline=baseline, candidate=_summary(_normal(60, 5, 4))
    )
    assert (worse.verdict, within.verdict, small.verdict) == ("regression", "pass", "inconclusive")
    assert worse.change is not None and worse.change > 0.1 and worse.p_value is not None and worse.p_value < 0.05
    assert small.p_value is None and small.test == ""


def test_lower_is_worse_for_link_throughput():
    gate = HealthGate("link_kbps", 0.05, 0.01, 20)
    baseline = _summary(_normal(2000, 200, seed=5))
    slower = signal_compare(
        INDICATORS["link_kbps"], gate, hardware_model="m", baseline=baseline, candidate=_summary(_normal(1500, 50, 6))
    )
    faster = signal_compare(
        INDICATORS["link_kbps"], gate, hardware_model="m", baseline=baseline, candidate=_summary(_normal(2500, 50, 7))
    )
    assert (slower.verdict, faster.verdict) == ("regression", "pass")


def test_fisher_gate_on_a_proportion():
    gate = HealthGate("sensor_calibration_failures", 0.5, 0.05, 20)
    indicator = INDICATORS["sensor_calibration_failures"]
    baseline = Summary(1000, 20, 20)  # 2 % of units fail calibration on the old release
    spike = signal_compare(indicator, gate, hardware_model="m", baseline=baseline, candidate=Summary(50, 10, 10))
    same = signal_compare(indicator, gate, hardware_model="m", baseline=baseline, candidate=Summary(50, 1, 1))
    doubtful = signal_compare(indicator, gate, hardware_model="m", baseline=baseline, candidate=Summary(50, 2, 2))
    assert spike.verdict == "regression" and spike.test == "fisher"
    assert spike.p_value is not None and spike.p_value < 0.001
    assert same.verdict == "pass"
    assert doubtful.verdict == "inconclusive"  # 4 % vs 2 %: beyond the tolerance, not significant on 50 units


def test_constant_values_on_both_sides_are_judged_without_a_spread():
    gate = HealthGate("boot_time_s", 0.1, 0.05, 2)
    same = signal_compare(
        INDICATORS["boot_time_s"],
        gate,
        hardware_model="m",
        baseline=Summary(5, 100, 2000),
        candidate=Summary(5, 100, 2000),
    )
    slower = signal_compare(
        INDICATORS["boot_time_s"],
        gate,
        hardware_model="m",
        baseline=Summary(5, 100, 2000),
        candidate=Summary(5, 150, 4500),
    )
    assert (same.verdict, slower.verdict) == ("pass", "regression")


def test_the_wave_verdict_is_the_worst_comparison():
    gate = HealthGate("boot_time_s", 0.1, 0.05, 2)
    indicator = INDICATORS["boot_time_s"]
    fine = signal_compare(
        indicator, gate, hardware_model="a", baseline=Summary(5, 100, 2000), candidate=Summary(5, 100, 2000)
    )
    bad = signal_compare(
        indicator, gate, hardware_model="b", baseline=Summary(5, 100, 2000), candidate=Summary(5, 150, 4500)
    )
    few = signal_compare(
        indicator, gate, hardware_model="c", baseline=Summary(5, 100, 2000), candidate=Summary(1, 20, 400)
    )
    assert signal_verdict([]) == SignalVerdict.NONE
    assert signal_verdict([fine]) == SignalVerdict.PASS
    assert signal_verdict([fine, few]) == SignalVerdict.INCONCLUSIVE
    assert signal_verdict([few, bad, fine]) == SignalVerdict.REGRESSION


def test_the_level_is_shared_by_every_comparison_of_the_wave():
    gate = HealthGate("sensor_calibration_failures", 0.5, 0.05, 20)
    indicator = INDICATORS["sensor_calibration_failures"]
    baseline, candidate = Summary(1000, 20, 20), Summary(100, 6, 6)  # 6 % vs 2 %: p = 0.025
    alone = signal_compare(indicator, gate, hardware_model="m", baseline=baseline, candidate=candidate)
    among_six = signal_compare(
        indicator, gate, hardware_model="m", baseline=baseline, candidate=candidate, comparisons=6
    )
    assert alone.verdict == "regression"
    assert among_six.verdict == "inconclusive" and among_six.significance == pytest.approx(0.05 / 6)
