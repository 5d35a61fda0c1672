"""Credential lifecycle over the management API: state, rotation (shown once) and revocation (reason, recorded)."""

from __future__ import annotations

import logging
import time

import pytest

from approvals.audit.models import DecisionRecord
from devices.credentials import device_credential_issue
from devices.models import DeviceCredential
from tests.device_api.conftest import checkin_body
from tests.support.records import after_state

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"


def _urls(serial: str) -> tuple[str, str]:
    return f"/api/v1/devices/{serial}/credential/", f"/api/v1/devices/{serial}/credential/revoke/"


@pytest.fixture
def device(fleet):
    return fleet["region"].devices.order_by("serial").first()


def test_rotation_replaces_the_secret_within_the_bound_and_shows_it_only_once(
    device, client_for, operator, device_client, settings
):
    # The old secret's check-in may be answered from memory until the process re-reads the check-in epochs
    # (devices.edge.quiet), at most OTA_CHECKIN_EPOCH_SECONDS after the rotation committed.
    settings.OTA_CHECKIN_EPOCH_SECONDS = 0.2
    issue_url, _ = _urls(device.serial)
    old = client_for(operator).post(issue_url).json()["secret"]
    old_client = device_client(device, old)
    assert old_client.post(CHECKIN, checkin_body(), format="json").status_code == 200
    rotated = client_for(operator).post(issue_url)
    assert rotated.status_code == 201 and rotated["Cache-Control"] == "no-store"
    new = rotated.json()["secret"]
    assert new != old
    time.sleep(0.2)
    assert old_client.post(CHECKIN, checkin_body(), format="json").status_code == 401
    assert device_client(device, new).post(CHECKIN, checkin_body(), format="json").status_code == 200
    state = client_for(operator).get(issue_url).json()
    assert set(state) == {"serial", "issued_at", "revoked_at", "active"}  # never the secret or its hash
    assert state["active"] is True and state["revoked_at"] is None
    records = DecisionRecord.objects.filter(action="devices.credential_issue", object_id=device.serial)
    assert [after_state(r)["replaced"] for r in records.order_by("seq")] == [False, True]


@pytest.mark.parametrize("role_fixture", ["operator", "security_officer"])
def test_operators_and_security_officers_revoke_with_a_reason(
    device, client_for, operator, device_client, request, role_fixture
):
    actor = request.getfixturevalue(role_fixture)
    client = device_client(device)
    _, revoke_url = _urls(device.serial)
    response = client_for(actor).post(revoke_url, {"reason": "unit reported stolen"}, format="json")
    assert response.status_code == 200
    assert response.json()["active"] is False and response.json()["revoked_at"]
    assert client.post(CHECKIN, checkin_body(), format="json").status_code == 401
    record = DecisionRecord.objects.get(action="devices.credential_revoke")
    assert (record.object_id, record.reason, record.actor_name) == (
        device.serial,
        "unit reported stolen",
        actor.username,
    )
    # Issuing again lets the device back in (with the new secret only).
    secret = client_for(operator).post(_urls(device.serial)[0]).json()["secret"]
    assert device_client(device, secret).post(CHECKIN, checkin_body(), format="json").status_code == 200


def test_refused_revocations_change_nothing_and_leave_only_a_security_log_line(
    device, client_for, operator, requester, auditor, device_client, caplog
):
    client = device_client(device)
    _, revoke_url = _urls(device.serial)
    before = DeviceCredential.objects.get(device=device)
    records = DecisionRecord.objects.count()
    with caplog.at_level(logging.WARNING, logger="ota.security"):
        cases = [
            (client_for(None), {"reason": "x"}, 401),
            (client_for(requester), {"reason": "curious"}, 403),
            (client_for(auditor), {"reason": "curious"}, 403),
            (client_for(operator), {}, 400),
            (client_for(operator), {"reason": ""}, 400),
            (client_for(operator), {"reason": "   "}, 400),
            (client_for(operator), {"reason": "x", "extra": 1}, 400),
            (client_for(operator), {"reason": "\u0000"}, 400),
        ]
        for api, body, expected in cases:
            response = api.post(revoke_url, body, format="json")
            assert response.status_code == expected, (body, response.json())
            assert set(response.json()) == {"error"}
    assert (
        client_for(operator)
        .post("/api/v1/devices/NOPE-1/credential/revoke/", {"reason": "x"}, format="json")
        .status_code
        == 404
    )
    refusals = [r.getMessage() for r in caplog.records if r.name == "ota.security"]
    assert any("requester" in line and "revoke" in line for line in refusals)
    assert any("auditor" in line and "revoke" in line for line in refusals)
    after = DeviceCredential.objects.get(device=device)
    assert (after.secret_hash, after.revoked_at) == (before.secret_hash, None)
    assert DecisionRecord.objects.count() == records
    assert client.post(CHECKIN, checkin_body(), format="json").status_code == 200


def test_revoking_twice_or_without_a_credential_is_a_conflict(device, fleet, client_for, operator):
    _, revoke_url = _urls(device.serial)
    assert client_for(operator).post(revoke_url, {"reason": "lost"}, format="json").json()["error"]["code"] == (
        "no_active_credential"
    )
    device_credential_issue(actor=operator, device=device)
    assert client_for(operator).post(revoke_url, {"reason": "lost"}, format="json").status_code == 200
    again = client_for(operator).post(revoke_url, {"reason": "lost"}, format="json")
    assert again.status_code == 409 and again.json()["error"]["code"] == "no_active_credential"
    assert DecisionRecord.objects.filter(action="devices.credential_revoke").count() == 1


def test_credential_state_is_404_before_issue_and_readable_by_any_role(
    device, client_for, operator, auditor, make_user
):
    issue_url, _ = _urls(device.serial)
    assert client_for(auditor).get(issue_url).status_code == 404
    device_credential_issue(actor=operator, device=device)
    assert client_for(auditor).get(issue_url).json()["active"] is True
    assert client_for(make_user()).get(issue_url).status_code == 403  # no role
    assert client_for(None).get(issue_url).status_code == 401
