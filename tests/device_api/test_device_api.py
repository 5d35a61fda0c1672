"""The device API contract: credential identity, check-in and offers, ranged downloads, status, telemetry."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from rest_framework.test import APIClient

from approvals.audit.models import DecisionRecord
from devices.credentials import device_credential_issue, device_credential_revoke, secret_hash
from devices.models import Device, DeviceCredential
from devices.services import device_decommission, device_quarantine
from ota_project.errors import NotPermitted
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentStatus, RolloutStatus
from rollouts.models import Deployment
from tests.device_api.conftest import IMAGE, checkin_body
from workflows.types import PhaseChange

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"


def status_url(deployment_id: int) -> str:
    return f"/device/v1/deployments/{deployment_id}/status/"


def _content(response) -> bytes:
    return b"".join(response.streaming_content)


def _offer(client: APIClient) -> dict:
    response = client.post(CHECKIN, checkin_body(), format="json")
    assert response.status_code == 200, response.json()
    return response.json()["offer"]


# --- credentials and identity --------------------------------------------------------------------------------


def test_credential_is_stored_only_as_its_hash_and_reissue_replaces_it(pilot, operator):
    first = device_credential_issue(actor=operator, device=pilot)
    second = device_credential_issue(actor=operator, device=pilot)
    credential = DeviceCredential.objects.get(device=pilot)
    assert credential.secret_hash == secret_hash(second) != secret_hash(first)
    assert DecisionRecord.objects.filter(action="devices.credential_issue").count() == 2
    assert not DecisionRecord.objects.filter(after__icontains=credential.secret_hash).exists()


def test_only_operators_issue_credentials(pilot, requester):
    with pytest.raises(NotPermitted):
        device_credential_issue(actor=requester, device=pilot)
    assert not DeviceCredential.objects.exists()


def test_operator_endpoint_returns_the_secret_once(pilot, client_for, operator, requester, device_client):
    assert client_for(requester).post(f"/api/v1/devices/{pilot.serial}/credential/").status_code == 403
    assert client_for(None).post(f"/api/v1/devices/{pilot.serial}/credential/").status_code == 401
    assert client_for(operator).post("/api/v1/devices/NOPE-1/credential/").status_code == 404
    response = client_for(operator).post(f"/api/v1/devices/{pilot.serial}/credential/")
    assert response.status_code == 201 and response["Cache-Control"] == "no-store"
    secret = response.json()["secret"]
    assert device_client(pilot, secret).post(CHECKIN, checkin_body(), format="json").status_code == 200


@pytest.mark.parametrize(
    "header",
    [None, "Device ", "Device nocolon", "Bearer abc", "Device TCU-UNKNOWN:secret", "Device {serial}:wrong-secret"],
)
def test_missing_or_bad_credentials_are_401(pilot, operator, header):
    device_credential_issue(actor=operator, device=pilot)
    client = APIClient()
    if header:
        client.credentials(HTTP_AUTHORIZATION=header.format(serial=pilot.serial))
    before = Device.objects.get(pk=pilot.pk)
    response = client.post(CHECKIN, checkin_body(), format="json")
    assert response.status_code == 401
    assert set(response.json()) == {"error"}
    assert Device.objects.get(pk=pilot.pk).last_seen_at == before.last_seen_at


def test_staff_users_cannot_use_the_device_api(client_for, operator, running):
    assert client_for(operator).post(CHECKIN, checkin_body(), format="json").status_code in (401, 403)
    # Nothing was offered or recorded for anyone.
    assert not running.deployments.exclude(status=DeploymentStatus.PENDING).exists()
    assert not Device.objects.filter(reported_at__isnull=False).exists()


def test_revoked_credential_and_inactive_devices_are_refused(pilot, other_pilot, operator, device_client):
    client = device_client(pilot)
    device_credential_revoke(actor=operator, device=pilot, reason="unit stolen")
    assert client.post(CHECKIN, checkin_body(), format="json").status_code == 401
    other = device_client(other_pilot)
    device_decommission(actor=operator, device=other_pilot, reason="scrapped")
    assert other.post(CHECKIN, checkin_body(), format="json").status_code == 401
    assert Device.objects.get(pk=other_pilot.pk).reported_at is None


# --- check-in ------------------------------------------------------------------------------------------------


def test_checkin_records_the_active_slot_and_shows_drift(fleet, device_client):
    device = Device.objects.filter(hardware_model=fleet["model"]).first()
    assert device is not None
    response = device_client(device).post(CHECKIN, checkin_body("0.9.5", 1), format="json")
    assert response.status_code == 200
    assert response.json() == {"poll_interval_seconds": 300, "offer": None}
    device.refresh_from_db()
    assert (device.reported_version, device.reported_release_counter) == ("0.9.5", 1)
    assert device.has_drift and device.last_seen_at is not None


def test_offer_only_when_the_rollout_runs(pilot, assigned, device_client, settings, sha, artifact_url):
    settings.OTA_DEVICE_POLL_SECONDS = 600
    client = device_client(pilot)
    answer = client.post(CHECKIN, checkin_body(), format="json").json()
    assert answer == {"poll_interval_seconds": 600, "offer": None}  # paused: nothing is offered
    steps.rollout_phase(PhaseChange(assigned.pk, RolloutStatus.RUNNING, 0))
    answer = client.post(CHECKIN, checkin_body(), format="json").json()
    offer = answer["offer"]
    deployment = Deployment.objects.get(device=pilot)
    assert answer["poll_interval_seconds"] == 30
    assert offer["deployment_id"] == deployment.pk and offer["kind"] == "update"
    assert (offer["release_version"], offer["release_counter"]) == ("1.1.0", 1)
    assert offer["artifact"]["sha256"] == sha and offer["artifact"]["length"] == len(IMAGE)
    url = urlsplit(offer["artifact"]["url"])
    assert url.path == urlsplit(artifact_url).path and url.query.startswith("token=") and offer["deadline_at"]
    assert deployment.status == DeploymentStatus.OFFERED


def test_paused_rollout_offers_nothing(pilot, running, device_client):
    steps.rollout_phase(PhaseChange(running.pk, RolloutStatus.PAUSED, 0))
    assert device_client(pilot).post(CHECKIN, checkin_body(), format="json").json()["offer"] is None
    assert Deployment.objects.get(device=pilot).status == DeploymentStatus.PENDING


def test_quarantined_device_checks_in_but_gets_no_offer(pilot, running, operator, device_client):
    client = device_client(pilot)
    device_quarantine(actor=operator, device=pilot, reason="odd modem behaviour")
    response = client.post(CHECKIN, checkin_body("1.0.0", 1), format="json")
    assert response.status_code == 200 and response.json()["offer"] is None
    withdrawn = Deployment.objects.get(device=pilot)
    assert (withdrawn.status, withdrawn.detail) == (DeploymentStatus.CANCELLED, "withdrawn: the device is quarantined")


@pytest.mark.parametrize(
    "body",
    [
        checkin_body(extra=1),
        checkin_body(active_slot="b", slots={"a": {"version": "1.0.0", "release_counter": 1}}),
        checkin_body(slots={"a": {"version": "1.0.0", "release_counter": 1, "x": 1}}),
        checkin_body(slots={"c": {"version": "1.0.0", "release_counter": 1}}, active_slot="a"),
        checkin_body("not-semver"),
        checkin_body(health={"modem": "yes please"}),
        checkin_body(boot_count=-1),
        {},
    ],
)
def test_malformed_checkin_is_400_and_changes_nothing(pilot, running, device_client, body):
    response = device_client(pilot).post(CHECKIN, body, format="json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"
    pilot.refresh_from_db()
    assert pilot.reported_at is None and pilot.last_seen_at is None
    assert Deployment.objects.get(device=pilot).status == DeploymentStatus.PENDING


def test_oversized_body_is_413(pilot, device_client):
    body = checkin_body(health={f"k{i}": True for i in range(2000)})
    response = device_client(pilot).post(CHECKIN, body, format="json")
    assert response.status_code == 413
    assert Device.objects.get(pk=pilot.pk).reported_at is None


# --- artifact download ---------------------------------------------------------------------------------------


def test_full_download_with_etag(offered, sha, artifact_url):
    response = offered.get(artifact_url)
    assert response.status_code == 200
    assert response["ETag"] == f'"{sha}"' and response["Accept-Ranges"] == "bytes"
    assert int(response["Content-Length"]) == len(IMAGE)
    assert _content(response) == IMAGE


def test_resuming_from_several_offsets_rebuilds_the_exact_image(offered, sha, artifact_url):
    received = b""
    for end in (999, 4095, 7000, len(IMAGE) + 500):
        response = offered.get(artifact_url, HTTP_RANGE=f"bytes={len(received)}-{end}", HTTP_IF_RANGE=f'"{sha}"')
        assert response.status_code == 206
        last = min(end, len(IMAGE) - 1)
        assert response["Content-Range"] == f"bytes {len(received)}-{last}/{len(IMAGE)}"
        chunk = _content(response)
        assert int(response["Content-Length"]) == len(chunk)
        received += chunk
    assert received == IMAGE
    tail = offered.get(artifact_url, HTTP_RANGE="bytes=10000-")
    assert tail.status_code == 206 and _content(tail) == IMAGE[10000:]


def test_suffix_range_unsatisfiable_and_if_range_mismatch(offered, artifact_url):
    suffix = offered.get(artifact_url, HTTP_RANGE="bytes=-100")
    assert suffix.status_code == 206 and _content(suffix) == IMAGE[-100:]
    assert suffix["Content-Range"] == f"bytes {len(IMAGE) - 100}-{len(IMAGE) - 1}/{len(IMAGE)}"
    unsatisfiable = offered.get(artifact_url, HTTP_RANGE=f"bytes={len(IMAGE)}-")
    assert unsatisfiable.status_code == 416 and unsatisfiable["Content-Range"] == f"bytes */{len(IMAGE)}"
    assert unsatisfiable.json()["error"]["code"] == "range_not_satisfiable"
    stale = offered.get(artifact_url, HTTP_RANGE="bytes=100-", HTTP_IF_RANGE='"0000"')
    assert stale.status_code == 200 and _content(stale) == IMAGE
    multiple = offered.get(artifact_url, HTTP_RANGE="bytes=0-1,5-6")
    assert multiple.status_code == 200 and _content(multiple) == IMAGE


def test_download_refused_when_not_offered_to_this_device(pilot, other_pilot, assigned, device_client, artifact_url):
    client = device_client(pilot)
    assert client.get(artifact_url).status_code == 404  # deployment pending: nothing offered yet
    steps.rollout_phase(PhaseChange(assigned.pk, RolloutStatus.RUNNING, 0))
    _offer(client)
    stranger = device_client(Device.objects.exclude(pk__in=[pilot.pk, other_pilot.pk]).first())
    assert stranger.get(artifact_url).status_code == 403  # the pilot's token is bound to the pilot
    assert (
        client.get(artifact_url.replace(urlsplit(artifact_url).path, f"/device/v1/artifacts/{'0' * 64}/")).status_code
        == 403
    )
    assert APIClient().get(artifact_url).status_code == 401


# --- status feedback -----------------------------------------------------------------------------------------


def test_status_flow_to_succeeded_with_replays(offered, pilot):
    deployment_id = Deployment.objects.get(device=pilot).pk
    url = status_url(deployment_id)
    for seq, status in enumerate(("downloading", "downloaded", "installing", "rebooting", "confirming"), start=1):
        response = offered.post(url, {"seq": seq, "status": status}, format="json")
        assert response.status_code == 200 and response.json()["applied"] is True
        assert response.json()["status"] == status and response.json()["last_seq"] == seq
    replay = offered.post(url, {"seq": 5, "status": "confirming"}, format="json")
    assert replay.status_code == 200 and replay.json()["applied"] is False
    old = offered.post(url, {"seq": 2, "status": "downloaded"}, format="json")
    assert old.status_code == 409 and old.json()["error"]["code"] == "stale_seq"
    assert old.json()["error"]["fields"] == {"seq": ["Must be at least 5."]}
    assert Deployment.objects.get(pk=deployment_id).status == "confirming"
    done = offered.post(
        url, {"seq": 6, "status": "succeeded", "booted_version": "1.1.0", "health_passed": True}, format="json"
    )
    assert done.status_code == 200 and done.json()["status"] == "succeeded" and done.json()["applied"] is True
    pilot.refresh_from_db()
    assert (pilot.installed_version, pilot.installed_release_counter) == ("1.1.0", 1)


def test_out_of_order_report_never_moves_backwards(offered, pilot):
    url = status_url(Deployment.objects.get(device=pilot).pk)
    offered.post(url, {"seq": 7, "status": "installing"}, format="json")
    late = offered.post(url, {"seq": 8, "status": "downloading"}, format="json")
    assert late.status_code == 200 and late.json()["status"] == "installing"


def test_refused_reports_change_nothing(offered, pilot, other_pilot, operator, device_client):
    deployment = Deployment.objects.get(device=pilot)
    other = Deployment.objects.get(device=other_pilot)
    offered.post(status_url(deployment.pk), {"seq": 1, "status": "confirming"}, format="json")
    before = Deployment.objects.get(pk=deployment.pk)
    url = status_url(deployment.pk)
    cases = [
        (status_url(other.pk), {"seq": 9, "status": "downloading"}, 404),
        (status_url(999_999), {"seq": 9, "status": "downloading"}, 404),
        (url, {"seq": 9, "status": "pending"}, 400),
        (url, {"seq": -1, "status": "downloading"}, 400),
        (url, {"seq": "x", "status": "downloading"}, 400),
        (url, {"seq": 9, "status": "downloading", "surprise": 1}, 400),
        (url, {"seq": 9, "status": "succeeded", "health_passed": True}, 400),
        (url, {"seq": 9, "status": "succeeded", "booted_version": "9.9.9", "health_passed": True}, 400),
        (url, {"seq": 9, "status": "succeeded", "booted_version": "1.1.0", "health_passed": False}, 400),
    ]
    for target, body, expected in cases:
        response = offered.post(target, body, format="json")
        assert response.status_code == expected, (body, response.json())
        assert set(response.json()) == {"error"}
    after = Deployment.objects.get(pk=deployment.pk)
    assert (after.status, after.last_seq, after.updated_at) == (before.status, before.last_seq, before.updated_at)
    assert Deployment.objects.get(pk=other.pk).status == other.status
    pilot.refresh_from_db()
    assert pilot.installed_version == "1.0.0"
