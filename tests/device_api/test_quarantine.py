"""Automatic quarantine: after the plan's number of failed installs a device gets no offer from anything until a
person releases it; quarantine, alert and release are on the record."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.plans import default_plan, plan_parse
from devices.choices import DeviceStatus
from devices.models import Device
from devices.scope import scope_devices
from devices.services import device_release_from_quarantine
from ota_project.alerts.choices import AlertKind, AlertStatus
from ota_project.alerts.models import Alert
from ota_project.errors import InvalidInput
from rollouts.choices import DeploymentStatus
from rollouts.deployment_services import Report, deployment_offer, deployment_report
from rollouts.models import Deployment
from rollouts.tasks import fleet_safety_check_task
from tests.web.helpers import page_client

pytestmark = pytest.mark.django_db


@pytest.fixture
def change_fields(change_fields):
    """The plan quarantines a device after 2 failed installs (and retries an install once)."""
    return {**change_fields, "rollout_plan": {**default_plan().to_json(), "quarantine_after_failures": 2}}


def _fail_install(device: Device, *, at, first_seq: int) -> Deployment:
    """The device is offered its deployment at `at`, starts installing it and reports the install failed."""
    offered = deployment_offer(device_id=device.pk, now=at)
    assert offered is not None, f"nothing offered to {device.serial}"
    device.refresh_from_db()
    for seq, status in enumerate(("downloading", "installing"), start=first_seq):
        deployment_report(device=device, deployment_id=offered.pk, report=Report(seq, status), now=at)
    deployment_report(
        device=device,
        deployment_id=offered.pk,
        report=Report(first_seq + 2, "failed", detail="flash write error", failure_class="install"),
        now=at,
    )
    return Deployment.objects.get(pk=offered.pk)


def test_plan_setting_is_validated_and_keeps_old_plan_hashes():
    stored = default_plan().to_json()
    assert "quarantine_after_failures" not in plan_parse(stored).to_json()  # plans approved before it hash the same
    assert plan_parse(stored).quarantine_threshold == 3
    assert plan_parse({**stored, "quarantine_after_failures": 0}).quarantine_threshold == 0
    for bad in (-1, 21, "3", True, 2.5):
        with pytest.raises(InvalidInput) as refused:
            plan_parse({**stored, "quarantine_after_failures": bad})
        assert "quarantine_after_failures" in refused.value.fields["rollout_plan"]


def test_a_device_is_quarantined_after_the_plans_failed_installs_recorded_and_alerted(
    pilot, running, django_capture_on_commit_callbacks
):
    now = timezone.now()
    retried = _fail_install(pilot, at=now, first_seq=1)
    assert retried.status == DeploymentStatus.PENDING  # the plan retries an install once
    pilot.refresh_from_db()
    assert (pilot.status, pilot.install_failures) == (DeviceStatus.ACTIVE, 1)
    with django_capture_on_commit_callbacks(execute=True):
        failed = _fail_install(pilot, at=now + timedelta(minutes=5), first_seq=4)
    assert failed.status == DeploymentStatus.FAILED
    pilot.refresh_from_db()
    assert pilot.status == DeviceStatus.QUARANTINED and pilot.install_failures == 2
    assert "after 2 failed installs" in pilot.status_reason
    record = DecisionRecord.objects.get(action="devices.device.quarantine", object_id=pilot.serial)
    assert record.actor is None and record.actor_name == "system:device_api"
    alert = Alert.objects.get(kind=AlertKind.DEVICE_QUARANTINED)
    assert alert.link == f"/fleet/devices/{pilot.serial}/" and alert.evidence["failed_installs"] == 2
    # The device's page lists it as quarantined with its history of deployments.
    page = page_client(running.started_by).get(f"/fleet/devices/{pilot.serial}/")
    assert page.status_code == 200, page.content.decode()[:3000]
    body = page.content.decode()
    assert "Quarantined" in body and "after 2 failed installs" in body and "flash write error" in body


def test_download_failures_do_not_count_towards_quarantine(pilot, running):
    offered = deployment_offer(device_id=pilot.pk, now=timezone.now())
    assert offered is not None
    deployment_report(device=pilot, deployment_id=offered.pk, report=Report(1, "downloading"))
    deployment_report(device=pilot, deployment_id=offered.pk, report=Report(2, "failed", failure_class="download"))
    pilot.refresh_from_db()
    assert pilot.install_failures == 0


def test_a_quarantined_device_gets_no_offer_even_when_a_forged_step_asks(pilot, running):
    now = timezone.now()
    _fail_install(pilot, at=now, first_seq=1)
    failed = _fail_install(pilot, at=now + timedelta(minutes=5), first_seq=4)
    pilot.refresh_from_db()
    assert pilot.status == DeviceStatus.QUARANTINED
    # A forged or replayed step puts the deployment back in line: the offer path withdraws it instead.
    Deployment.objects.filter(pk=failed.pk).update(status=DeploymentStatus.PENDING, finished_at=None, not_before=None)
    assert deployment_offer(device_id=pilot.pk, now=now + timedelta(minutes=10)) is None
    withdrawn = Deployment.objects.get(pk=failed.pk)
    assert withdrawn.status == DeploymentStatus.CANCELLED and withdrawn.detail == "withdrawn: the device is quarantined"
    # Code that skips every rule and writes the offer itself is refused by the database.
    Deployment.objects.filter(pk=failed.pk).update(status=DeploymentStatus.PENDING)
    with pytest.raises(IntegrityError, match="not active"), transaction.atomic():
        Deployment.objects.filter(pk=failed.pk).update(status=DeploymentStatus.OFFERED)
    # No wave assigns it either: targets are active devices only.
    assert not scope_devices(running.change.scope).filter(pk=pilot.pk).exists()


def test_a_person_releases_the_device_recorded_and_its_count_starts_again(pilot, running, operator):
    now = timezone.now()
    _fail_install(pilot, at=now, first_seq=1)
    _fail_install(pilot, at=now + timedelta(minutes=5), first_seq=4)
    pilot.refresh_from_db()
    device_release_from_quarantine(actor=operator, device=pilot, reason="modem replaced, bench-tested")
    pilot.refresh_from_db()
    assert (pilot.status, pilot.install_failures) == (DeviceStatus.ACTIVE, 0)
    record = DecisionRecord.objects.get(action="devices.device.release", object_id=pilot.serial)
    assert record.actor == operator and record.reason == "modem replaced, bench-tested"


def test_releasing_the_device_resolves_its_quarantine_alert_by_that_person(pilot, running, operator):
    now = timezone.now()
    _fail_install(pilot, at=now, first_seq=1)
    _fail_install(pilot, at=now + timedelta(minutes=5), first_seq=4)
    alert = Alert.objects.get(kind=AlertKind.DEVICE_QUARANTINED)
    assert alert.status == AlertStatus.OPEN
    pilot.refresh_from_db()
    with pytest.raises(InvalidInput):  # refused (a reason is text of at most so many characters): nothing changes
        device_release_from_quarantine(actor=operator, device=pilot, reason="x" * 5000)
    alert.refresh_from_db()
    pilot.refresh_from_db()
    assert (alert.status, pilot.status) == (AlertStatus.OPEN, DeviceStatus.QUARANTINED)
    device_release_from_quarantine(actor=operator, device=pilot, reason="modem replaced, bench-tested")
    alert.refresh_from_db()
    assert (alert.status, alert.resolved_by, alert.resolve_note) == (
        AlertStatus.RESOLVED,
        operator,
        "Released from quarantine: modem replaced, bench-tested",
    )
    release = DecisionRecord.objects.get(action="devices.device.release", object_id=pilot.serial)
    resolve = DecisionRecord.objects.get(action="alert.resolve", object_id=str(alert.pk))
    # One decision: both rows in the same transaction, one after the other, by the same person.
    assert resolve.actor == operator and resolve.seq == release.seq + 1
    # Releasing again changes nothing and resolves nothing more.
    device_release_from_quarantine(actor=operator, device=pilot, reason="again")
    assert DecisionRecord.objects.filter(action="alert.resolve").count() == 1


def test_a_success_resets_the_count(pilot, running):
    offered = deployment_offer(device_id=pilot.pk, now=timezone.now())
    assert offered is not None
    Device.objects.filter(pk=pilot.pk).update(install_failures=1)
    for seq, status in enumerate(("downloading", "downloaded", "installing", "rebooting", "confirming"), start=1):
        deployment_report(device=pilot, deployment_id=offered.pk, report=Report(seq, status))
    deployment_report(
        device=pilot,
        deployment_id=offered.pk,
        report=Report(6, "succeeded", booted_version=offered.release.version, health_passed=True),
    )
    pilot.refresh_from_db()
    assert pilot.install_failures == 0 and pilot.status == DeviceStatus.ACTIVE


def test_a_rolled_back_install_counts_and_asks_for_a_fleet_check_of_its_release(
    pilot, running, monkeypatch, django_capture_on_commit_callbacks
):
    cache.clear()
    checked: list[int] = []
    monkeypatch.setattr(fleet_safety_check_task, "delay", lambda release_id: checked.append(release_id))
    offered = deployment_offer(device_id=pilot.pk, now=timezone.now())
    assert offered is not None
    for seq, status in enumerate(("downloading", "downloaded", "installing", "rebooting"), start=1):
        deployment_report(device=pilot, deployment_id=offered.pk, report=Report(seq, status))
    with django_capture_on_commit_callbacks(execute=True):
        deployment_report(device=pilot, deployment_id=offered.pk, report=Report(5, "rolled_back", failure_class="boot"))
    pilot.refresh_from_db()
    assert pilot.install_failures == 1
    assert checked == [offered.release_id]
