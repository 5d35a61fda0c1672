"""The fleet-wide safety net: a rollback or unexpected-reboot spike across every rollout of a release pauses each
running rollout of that release through the workflow (a system pause the database must back) and alerts once."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.core import mail
from django.core.cache import cache
from django.utils import timezone

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import DecisionRecord, SecurityEvent
from approvals.plans import default_plan, plan_hash
from devices import telemetry
from devices.models import TelemetrySample
from ota_project.alerts.choices import AlertKind, AlertSeverity
from ota_project.alerts.models import Alert
from ota_project.errors import NotPermitted
from ota_project.roles import Role
from rollouts import fleet_safety, rollout_services
from rollouts.choices import DeploymentKind, RolloutStatus
from rollouts.models import Deployment, FleetSignalSnapshot, Rollout, Wave
from rollouts.signal_gates import deployment_attributions
from rollouts.tasks import fleet_safety_check_task
from tests.factories import ChangeRequestFactory, DeviceFactory, FirmwareReleaseFactory, UserFactory
from tests.support.alerts import raised_concurrently
from workflows import client as workflow_client
from workflows import policy
from workflows.types import HumanAction, Phase, Update


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.OTA_FLEET_ROLLBACK_RATE_LIMIT = 0.2
    settings.OTA_FLEET_REBOOT_RATE_LIMIT = 0.3
    settings.OTA_FLEET_MIN_SAMPLE = 10
    settings.OTA_FLEET_WINDOW_SECONDS = 3600


@pytest.fixture
def pauses_sent(monkeypatch) -> list[tuple[int, str, HumanAction]]:
    """The Updates the safety net sends to workflows (no Temporal server in these tests)."""
    sent: list[tuple[int, str, HumanAction]] = []

    def execute(rollout_id: int, update_name: str, action: HumanAction) -> Any:
        sent.append((rollout_id, update_name, action))
        return None

    monkeypatch.setattr(workflow_client, "execute_rollout_update", execute)
    return sent


def _rollout(release, old, operator, status=RolloutStatus.RUNNING) -> Rollout:
    plan = default_plan().to_json()
    change = ChangeRequestFactory.create(release=release, rollback_release=old)
    rollout = Rollout.objects.create(
        change=change,
        release=release,
        rollback_release=old,
        plan=plan,
        plan_hash=plan_hash(plan),
        status=status,
        started_by=operator,
    )
    Wave.objects.create(rollout=rollout, index=0, name="pilot", status="running", started_at=timezone.now())
    return rollout


def _finished(rollout: Rollout, statuses: list[str], *, ago: timedelta = timedelta(minutes=5)) -> list[Deployment]:
    wave = rollout.waves.get(index=0)
    finished_at = timezone.now() - ago
    return [
        Deployment.objects.create(
            rollout=rollout,
            wave=wave,
            device=DeviceFactory.create(),
            release=rollout.release,
            kind=DeploymentKind.UPDATE,
            status=status,
            finished_at=finished_at,
        )
        for status in statuses
    ]


@pytest.fixture
def releases(db) -> dict[str, Any]:
    operator = UserFactory.create(username="olive-operator", roles=[Role.OPERATOR])
    old = FirmwareReleaseFactory.create(version="1.0.0", release_counter=1)
    bad = FirmwareReleaseFactory.create(version="1.1.0", release_counter=1)
    other = FirmwareReleaseFactory.create(version="2.0.0", release_counter=1)
    return {
        "operator": operator,
        "bad": bad,
        "first": _rollout(bad, old, operator),
        "second": _rollout(bad, old, operator, RolloutStatus.AWAITING_PROMOTION),
        "paused": _rollout(bad, old, operator, RolloutStatus.PAUSED),
        "elsewhere": _rollout(other, old, operator),
    }


def _requested() -> list[int]:
    return sorted(
        int(pk)
        for pk in DecisionRecord.objects.filter(action=fleet_safety.PAUSE_REQUESTED).values_list("object_id", flat=True)
    )


@pytest.mark.django_db
def test_rates_under_the_limit_or_on_a_small_sample_change_nothing(releases, pauses_sent):
    _finished(releases["first"], ["rolled_back"] * 3 + ["succeeded"] * 5)  # 37% of 8: under the minimum sample
    assert fleet_safety.fleet_safety_check(release_id=releases["bad"].pk) == []
    _finished(releases["second"], ["succeeded"] * 10)  # 3 of 18 = 17%: under 20%
    assert fleet_safety.fleet_safety_check(release_id=releases["bad"].pk) == []
    _finished(releases["first"], ["rolled_back"] * 2, ago=timedelta(hours=2))  # outside the window: not counted
    rates = fleet_safety.fleet_rates(release_id=releases["bad"].pk)
    assert (rates.finished, rates.rolled_back) == (18, 3)
    assert fleet_safety.fleet_safety_check(release_id=releases["bad"].pk) == []
    assert not Alert.objects.exists() and _requested() == [] and pauses_sent == []


@pytest.mark.django_db
def test_a_rollback_spike_pauses_every_running_rollout_of_the_release_and_alerts_once(
    releases, pauses_sent, django_capture_on_commit_callbacks
):
    _finished(releases["first"], ["rolled_back"] * 4 + ["succeeded"] * 4)
    _finished(releases["second"], ["rolled_back"] * 1 + ["succeeded"] * 3 + ["failed"])
    _finished(releases["elsewhere"], ["rolled_back"] * 20)  # another release's trouble is its own
    with django_capture_on_commit_callbacks(execute=True):
        asked = fleet_safety.fleet_safety_check(release_id=releases["bad"].pk)
    first, second = releases["first"], releases["second"]
    assert sorted(asked) == _requested() == sorted([first.pk, second.pk])
    assert sorted(rollout_id for rollout_id, _, _ in pauses_sent) == sorted([first.pk, second.pk])
    for _, update, action in pauses_sent:
        assert update == Update.PAUSE
        assert (action.actor_id, action.actor_roles) == (policy.SYSTEM_ACTOR_ID, [policy.SAFETY_NET_ROLE])
        assert "rollback rate" in action.reason
    record = DecisionRecord.objects.filter(action=fleet_safety.PAUSE_REQUESTED).first()
    assert record is not None and record.actor_name == "system:fleet-safety"
    alert = Alert.objects.get()
    assert (alert.kind, alert.severity) == (AlertKind.FLEET_ROLLBACK_RATE, AlertSeverity.CRITICAL)
    assert alert.link == f"/rollouts/{first.pk}/"
    assert alert.evidence["rolled_back"] == 5 and alert.evidence["finished"] == 13
    assert sorted(alert.evidence["rollouts_paused"]) == sorted([first.pk, second.pk])
    assert len(mail.outbox) == 1
    # The spike persists: counted on the same alert, nobody is mailed again and nothing is asked twice.
    with django_capture_on_commit_callbacks(execute=True):
        assert fleet_safety.fleet_safety_check(release_id=releases["bad"].pk) == []
    assert Alert.objects.get().occurrences == 2 and len(mail.outbox) == 1 and len(pauses_sent) == 2


def _report_reboots(deployments: list[Deployment], rebooting: int) -> None:
    """Each device's agent sends its post-update sample naming its deployment through the telemetry intake (attributed
    as the device API attributes it); the first `rebooting` of them report unexpected reboots."""
    now = timezone.now()
    for index, deployment in enumerate(deployments):
        sample = {
            "deployment_id": deployment.pk,
            "reported_at": now - timedelta(minutes=1),
            "unexpected_reboots": 2 if index < rebooting else 0,
            "boot_time_s": 40,
        }
        named = deployment_attributions(device=deployment.device, deployment_ids=[deployment.pk])
        accepted = telemetry.telemetry_batch_accept(device=deployment.device, samples=[sample], deployments=named)
        telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk)


@pytest.mark.django_db
def test_an_unexpected_reboot_spike_pauses_too(releases, pauses_sent, django_capture_on_commit_callbacks):
    _report_reboots(_finished(releases["first"], ["succeeded"] * 10), rebooting=4)
    with django_capture_on_commit_callbacks(execute=True):
        fleet_safety_check_task()  # the periodic check finds the release by its running rollouts
    alert = Alert.objects.get()
    assert alert.kind == AlertKind.FLEET_REBOOT_RATE
    assert (alert.evidence["rebooting_devices"], alert.evidence["reporting_devices"]) == (4, 10)
    assert sorted(rollout_id for rollout_id, _, _ in pauses_sent) == sorted(
        [releases["first"].pk, releases["second"].pk]
    )


@pytest.mark.django_db
def test_the_reboot_spike_still_trips_after_the_raw_samples_are_purged(releases, pauses_sent, settings):
    _report_reboots(_finished(releases["first"], ["succeeded"] * 10), rebooting=4)
    settings.OTA_TELEMETRY_RETENTION_DAYS = 0
    assert telemetry.telemetry_purge(now=timezone.now() + timedelta(seconds=1))["samples"] == 10
    assert not TelemetrySample.objects.exists()
    assert sorted(fleet_safety.fleet_safety_check(release_id=releases["bad"].pk)) == sorted(
        [releases["first"].pk, releases["second"].pk]
    )
    assert Alert.objects.get().kind == AlertKind.FLEET_REBOOT_RATE


@pytest.mark.django_db
def test_reboots_reported_before_the_window_stop_counting(releases, pauses_sent, settings):
    settings.OTA_FLEET_CHECK_SECONDS = 60
    bad = releases["bad"].pk
    start = timezone.now()
    Rollout.objects.filter(release_id=bad).update(created_at=start - timedelta(hours=3))
    # No snapshot yet of a release older than the window: the first check measures nothing and stores its counts.
    _report_reboots(_finished(releases["first"], ["succeeded"] * 10), rebooting=8)
    assert fleet_safety.fleet_safety_check(release_id=bad, now=start) == []
    assert fleet_safety.fleet_rates(release_id=bad, now=start).reboot_span_seconds == 0
    # The checks go on every minute; a spike an hour later counts from the snapshot at the window's start.
    for minute in range(1, 61):
        fleet_safety.fleet_safety_check(release_id=bad, now=start + timedelta(minutes=minute))
    _report_reboots(_finished(releases["second"], ["succeeded"] * 10), rebooting=4)
    later = start + timedelta(minutes=61, seconds=30)
    rates = fleet_safety.fleet_rates(release_id=bad, now=later)
    assert (rates.rebooting_devices, rates.reporting_devices) == (4, 10)  # the first spike is over an hour old
    assert 3600 <= rates.reboot_span_seconds <= 3600 + 120
    assert fleet_safety.fleet_safety_check(release_id=bad, now=later) != []
    assert Alert.objects.get().evidence["reboot_span_seconds"] == rates.reboot_span_seconds
    # Snapshots no window can start from are pruned: about an hour's worth are kept.
    assert FleetSignalSnapshot.objects.filter(release_id=bad).count() <= 63


@pytest.mark.django_db(transaction=True)
def test_concurrent_checks_alert_once_and_ask_each_rollout_once(releases, pauses_sent):
    _finished(releases["first"], ["rolled_back"] * 5 + ["succeeded"] * 5)
    raised_concurrently(lambda: fleet_safety.fleet_safety_check(release_id=releases["bad"].pk), times=6)
    assert _requested() == sorted([releases["first"].pk, releases["second"].pk])
    assert sorted(rollout_id for rollout_id, _, _ in pauses_sent) == _requested()


# --- The system pause at the workflow's authorize step -------------------------------------------------------------


def _system_pause(rollout: Rollout, update_id: str, action: str = "pause") -> None:
    rollout_services.human_action_authorize(
        rollout_id=rollout.pk,
        action=action,
        actor_id=policy.SYSTEM_ACTOR_ID,
        reason="fleet-wide rollback rate 50%",
        wave_index=0,
        token="",
        update_id=update_id,
    )


@pytest.mark.django_db
def test_the_workflow_may_pause_without_a_person_only_on_the_safety_nets_request(releases, pauses_sent):
    first = releases["first"]
    with pytest.raises(NotPermitted):  # a forged system pause: nothing in the record asks for it
        _system_pause(first, "update-forged")
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.ACTION_FORGED).exists()
    assert not DecisionRecord.objects.filter(action="rollout.pause").exists()
    _finished(first, ["rolled_back"] * 5 + ["succeeded"] * 5)
    fleet_safety.fleet_safety_check(release_id=releases["bad"].pk)
    with pytest.raises(NotPermitted):  # the safety net only pauses
        _system_pause(first, "update-resume", action="resume")
    _system_pause(first, "update-1")
    _system_pause(first, "update-1")  # the activity retried: recorded once
    pauses = DecisionRecord.objects.filter(action="rollout.pause", object_id=str(first.pk))
    assert pauses.count() == 1 and pauses.get().actor_name == "system:fleet-safety"
    with pytest.raises(NotPermitted):  # the request was carried out: it cannot be replayed for another pause
        _system_pause(first, "update-2")


def test_the_policy_lets_the_system_actor_pause_and_nothing_else():
    def refusal(action: str, *, roles=(policy.SAFETY_NET_ROLE,), phase: str = Phase.RUNNING) -> str:
        return policy.human_action_refusal(
            action,
            actor_id=policy.SYSTEM_ACTOR_ID,
            actor_roles=list(roles),
            author_id=7,
            phase=phase,
            gate="",
            gated_wave=-1,
            requested_wave=-1,
        )

    assert refusal(Update.PAUSE) == ""
    assert refusal(Update.PAUSE, phase=Phase.AWAITING_PROMOTION) == ""
    assert refusal(Update.PAUSE, phase=Phase.HALTED) != ""
    assert refusal(Update.PAUSE, roles=["operator"]) != ""
    for action in (Update.RESUME, Update.ABORT, Update.ROLLBACK, Update.PROMOTE):
        assert refusal(action) != ""


@pytest.mark.django_db
def test_the_beat_check_resends_a_pause_asked_but_not_carried_out(releases, pauses_sent):
    _finished(releases["first"], ["rolled_back"] * 5 + ["succeeded"] * 5)
    fleet_safety.fleet_safety_check(release_id=releases["bad"].pk)  # its on-commit never ran (a lost task)
    assert pauses_sent == []
    fleet_safety_check_task()
    assert sorted(rollout_id for rollout_id, _, _ in pauses_sent) == sorted(
        [releases["first"].pk, releases["second"].pk]
    )


@pytest.mark.django_db
def test_checks_triggered_by_reports_are_throttled_per_release(
    releases, monkeypatch, django_capture_on_commit_callbacks
):
    cache.clear()
    checked: list[int] = []
    monkeypatch.setattr(fleet_safety_check_task, "delay", lambda release_id: checked.append(release_id))
    with django_capture_on_commit_callbacks(execute=True):
        fleet_safety.fleet_safety_check_soon(releases["bad"].pk)
        fleet_safety.fleet_safety_check_soon(releases["bad"].pk)  # throttled
    assert checked == [releases["bad"].pk]
