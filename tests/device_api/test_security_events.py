"""Device API refusals leave security events: bad credentials, cross-device reports, stale and replayed reports,
refused images; each refused request still changes nothing, and a flood stays a bounded number of rows."""

from __future__ import annotations

import pytest
from django.db import OperationalError
from rest_framework.test import APIClient

from approvals.audit import security
from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import DecisionRecord, SecurityEvent
from devices.credentials import device_credential_issue, device_credential_revoke
from devices.models import Device, TelemetryBatch
from rollouts.models import Deployment
from tests.device_api.conftest import checkin_body
from tests.device_api.test_device_api import CHECKIN, status_url

pytestmark = pytest.mark.django_db

K = SecurityEventKind


def _events(kind: str) -> list[SecurityEvent]:
    return list(SecurityEvent.objects.filter(kind=kind))


@pytest.mark.parametrize(
    ("header", "serial"),
    [
        ("Device TCU-UNKNOWN:secret", "TCU-UNKNOWN"),
        ("Device {serial}:wrong-secret", "{serial}"),
        ("Device nocolon", "nocolon"),
        ("Device " + "x" * 600, ""),
    ],
)
def test_each_failed_device_authentication_is_one_event_and_says_nothing_about_why(pilot, operator, header, serial):
    device_credential_issue(actor=operator, device=pilot)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header.format(serial=pilot.serial), REMOTE_ADDR="192.0.2.44")
    before = Device.objects.get(pk=pilot.pk)
    assert client.post(CHECKIN, checkin_body(), format="json").status_code == 401
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.count) == (K.DEVICE_AUTH_FAILED, "device_api.auth", 1)
    assert event.device_serial == serial.format(serial=pilot.serial) and event.address == "192.0.2.44"
    assert event.message == "Invalid device credentials."
    assert Device.objects.get(pk=pilot.pk).last_seen_at == before.last_seen_at


def test_revoked_credential_is_the_same_event_as_a_wrong_secret(pilot, operator, device_client):
    client = device_client(pilot)
    device_credential_revoke(actor=operator, device=pilot, reason="unit stolen")
    client.post(CHECKIN, checkin_body(), format="json")
    client.post(CHECKIN, checkin_body(), format="json")
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.key, event.count, event.message) == (
        K.DEVICE_AUTH_FAILED,
        f"device:{pilot.serial}",
        2,
        "Invalid device credentials.",
    )


def test_no_credential_at_all_is_a_401_without_event(pilot):
    assert APIClient().post(CHECKIN, checkin_body(), format="json").status_code == 401
    assert not SecurityEvent.objects.exists()


def test_a_status_report_for_another_devices_deployment_is_cross_device_and_still_404(offered, pilot, other_pilot):
    other = Deployment.objects.get(device=other_pilot)
    response = offered.post(status_url(other.pk), {"seq": 9, "status": "downloading"}, format="json")
    assert response.status_code == 404
    missing = offered.post(status_url(999_999), {"seq": 9, "status": "downloading"}, format="json")
    assert missing.json() == response.json()  # the device cannot tell "not yours" from "missing"
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.device_serial, event.subject) == (
        K.DEVICE_CROSS_DEVICE,
        "device_api.status",
        pilot.serial,
        f"deployment:{other.pk}",
    )
    after = Deployment.objects.get(pk=other.pk)
    assert (after.status, after.last_seq, after.updated_at) == (other.status, other.last_seq, other.updated_at)


def test_stale_and_replayed_reports_are_recorded_and_change_nothing(offered, pilot):
    deployment = Deployment.objects.get(device=pilot)
    url = status_url(deployment.pk)
    for seq, status in ((1, "downloading"), (2, "downloaded")):
        assert offered.post(url, {"seq": seq, "status": status}, format="json").json()["applied"] is True
    assert not SecurityEvent.objects.exists()  # progress is no refusal
    before = Deployment.objects.get(pk=deployment.pk)
    records = DecisionRecord.objects.count()

    replay = offered.post(url, {"seq": 2, "status": "downloaded"}, format="json")
    assert replay.status_code == 200 and replay.json()["applied"] is False
    offered.post(url, {"seq": 2, "status": "downloaded"}, format="json")
    stale = offered.post(url, {"seq": 1, "status": "downloading"}, format="json")
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "stale_seq"

    (replayed,) = _events(K.DEVICE_REPLAY)
    assert (replayed.count, replayed.subject, replayed.device_serial) == (
        2,
        f"deployment:{deployment.pk}",
        pilot.serial,
    )
    (old,) = _events(K.DEVICE_STALE_REPORT)
    assert old.count == 1 and "older than the last applied report (2)" in old.message
    after = Deployment.objects.get(pk=deployment.pk)
    assert (after.status, after.last_seq, after.updated_at) == (before.status, before.last_seq, before.updated_at)
    assert DecisionRecord.objects.count() == records


def test_an_image_not_offered_to_the_device_is_refused_and_recorded(pilot, other_pilot, running, device_client, sha):
    stranger = Device.objects.exclude(pk__in=[pilot.pk, other_pilot.pk]).first()
    assert stranger is not None
    response = device_client(stranger).get(f"/device/v1/artifacts/{sha}/")
    assert response.status_code == 401 and response.json()["error"]["code"] == "download_token_required"
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.device_serial, event.subject) == (
        K.DEVICE_ARTIFACT_REFUSED,
        "device_api.artifact",
        stranger.serial,
        f"sha256:{sha}",
    )
    assert not Deployment.objects.filter(device=stranger).exists()


def test_telemetry_naming_another_devices_deployment_is_cross_device(offered, pilot, other_pilot):
    other = Deployment.objects.get(device=other_pilot).pk
    body = {"samples": [{"reported_at": "2026-01-05T10:00:00Z", "deployment_id": other, "boot_time_s": 3}]}
    assert offered.post("/device/v1/telemetry/", body, format="json").status_code == 400
    (event,) = SecurityEvent.objects.all()
    assert (event.kind, event.source, event.subject) == (
        K.DEVICE_CROSS_DEVICE,
        "device_api.telemetry",
        f"deployments:{other}",
    )
    assert not TelemetryBatch.objects.exists()


def test_a_broken_event_store_never_changes_the_answer(pilot, monkeypatch):
    def broken(*args, **kwargs):
        raise OperationalError("database unavailable")

    monkeypatch.setattr(security, "_write", broken)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Device TCU-UNKNOWN:secret")
    response = client.post(CHECKIN, checkin_body(), format="json")
    assert response.status_code == 401 and response.json()["error"]["code"] == "authentication_failed"


@pytest.mark.django_db(transaction=True)
def test_a_flood_of_bad_credentials_from_one_address_stays_a_few_counted_rows(settings):
    settings.OTA_SECURITY_EVENT_KEYS_PER_ADDRESS = 5
    client = APIClient(REMOTE_ADDR="198.51.100.23")
    for n in range(2_000):
        client.credentials(HTTP_AUTHORIZATION=f"Device RANDOM-{n}:guess")
        assert client.post(CHECKIN, {}, format="json").status_code == 401
    rows = list(SecurityEvent.objects.all())
    # At most five serial rows plus the address row per bucket; the run may straddle one bucket boundary.
    assert len(rows) <= 2 * (5 + 1)
    assert sum(row.count for row in rows) == 2_000
    assert {row.kind for row in rows} == {K.DEVICE_AUTH_FAILED}
    assert max(rows, key=lambda row: row.count).key == "address:198.51.100.23"
    assert not DecisionRecord.objects.exists()
