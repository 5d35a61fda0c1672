"""Bad input on the device API (issue #4): a clear 4xx in the one error envelope, and nothing changes."""

from __future__ import annotations

import pytest

from devices.models import Device, TelemetryBatch
from rollouts.models import Deployment

pytestmark = pytest.mark.django_db

CHECKIN = "/device/v1/checkin/"


def status_url(deployment_id: int) -> str:
    return f"/device/v1/deployments/{deployment_id}/status/"


def _snapshot(pilot: Device) -> tuple:
    deployment = Deployment.objects.get(device=pilot)
    device = Device.objects.get(pk=pilot.pk)
    return (
        deployment.status,
        deployment.last_seq,
        deployment.updated_at,
        device.reported_at,
        device.last_seen_at,
        device.installed_version,
        TelemetryBatch.objects.count(),
    )


@pytest.mark.parametrize(
    ("path", "content_type", "payload", "expected", "code"),
    [
        ("status", "application/json", b"{not json", 400, "parse_error"),
        ("status", "application/json", b"[]", 400, "invalid"),
        ("status", "application/json", b"null", 400, "invalid"),
        ("status", "application/json", b'"downloading"', 400, "invalid"),
        ("status", "application/json", b'{"seq": 1e400, "status": "downloading"}', 400, "invalid"),
        ("status", "application/json", b'{"seq": 9, "status": "downloading", "detail": "\\ud800"}', 400, "parse_error"),
        ("status", "application/x-www-form-urlencoded", b"seq=9&status=downloading", 415, "unsupported_media_type"),
        (
            "status",
            "application/json",
            b'{"seq": 9, "status": "downloading", "detail": "' + b"x" * 20_000 + b'"}',
            413,
            "payload_too_large",
        ),
        ("status", "application/json", b'{"seq": 9, "status": "failed", "status": "downloading"}', 400, "parse_error"),
        ("checkin", "application/json", b"{not json", 400, "parse_error"),
        ("checkin", "application/json", b'{"active_slot": "a", "active_slot": "b"}', 400, "parse_error"),
        ("checkin", "text/plain", b"hello", 415, "unsupported_media_type"),
        ("checkin", "application/json", b"[" * 5000 + b"]" * 5000, 400, "parse_error"),
        (
            "telemetry",
            "application/json",
            b'{"samples": [{"reported_at": "yesterday", "boot_time_s": 1}]}',
            400,
            "invalid",
        ),
    ],
)
def test_malformed_bodies_are_refused_clearly_and_change_nothing(
    offered, pilot, path, content_type, payload, expected, code
):
    url = {
        "status": status_url(Deployment.objects.get(device=pilot).pk),
        "checkin": CHECKIN,
        "telemetry": "/device/v1/telemetry/",
    }[path]
    before = _snapshot(pilot)
    response = offered.generic("POST", url, payload, content_type=content_type)
    assert response.status_code == expected, response.content[:300]
    assert response["Content-Type"] == "application/json"
    assert set(response.json()) == {"error"} and response.json()["error"]["code"] == code
    assert _snapshot(pilot) == before


def test_a_report_from_the_past_is_refused_and_changes_nothing(offered, pilot):
    url = status_url(Deployment.objects.get(device=pilot).pk)
    assert offered.post(url, {"seq": 10, "status": "downloading"}, format="json").json()["applied"] is True
    before = _snapshot(pilot)
    past = offered.post(url, {"seq": 9, "status": "downloaded"}, format="json")
    assert past.status_code == 409
    assert past.json()["error"]["code"] == "stale_seq" and "seq" in past.json()["error"]["fields"]
    replay = offered.post(url, {"seq": 10, "status": "downloading"}, format="json")
    assert replay.status_code == 200 and replay.json()["applied"] is False  # the same report again: idempotent
    assert _snapshot(pilot) == before


def test_another_devices_deployment_looks_exactly_like_a_missing_one(offered, pilot, other_pilot):
    other = Deployment.objects.get(device=other_pilot)
    before = (other.status, other.last_seq, other.updated_at)
    theirs = offered.post(status_url(other.pk), {"seq": 50, "status": "downloading"}, format="json")
    missing = offered.post(status_url(10**9), {"seq": 50, "status": "downloading"}, format="json")
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    other.refresh_from_db()
    assert (other.status, other.last_seq, other.updated_at) == before


def test_a_huge_deployment_id_in_the_path_is_a_404_not_a_500(offered):
    assert offered.post(status_url(2**70), {"seq": 1, "status": "downloading"}, format="json").status_code == 404


def test_only_post_and_get_are_answered(offered, artifact_url):
    assert offered.get(CHECKIN).status_code == 405
    assert offered.delete(artifact_url).status_code == 405
    assert offered.put("/device/v1/telemetry/", {}, format="json").status_code == 405


@pytest.mark.parametrize(
    ("path", "payload", "key"),
    [
        # Top level: which status did the device mean? Today the last one silently wins.
        ("status", b'{"seq": 10, "status": "failed", "status": "downloading"}', "status"),
        # Nested: two different versions claimed for the same slot.
        (
            "checkin",
            b'{"slots": {"a": {"version": "1.1.0", "release_counter": 2, "version": "1.0.0"}}, "active_slot": "a"}',
            "version",
        ),
        ("telemetry", b'{"samples": [{"boot_time_s": 1, "boot_time_s": 2}]}', "boot_time_s"),
    ],
)
def test_a_duplicated_key_is_a_400_naming_it_and_changes_nothing(offered, pilot, path, payload, key):
    url = {
        "status": status_url(Deployment.objects.get(device=pilot).pk),
        "checkin": CHECKIN,
        "telemetry": "/device/v1/telemetry/",
    }[path]
    before = _snapshot(pilot)
    response = offered.generic("POST", url, payload, content_type="application/json")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "code": "parse_error",
            "message": f'JSON parse error - the key "{key}" appears more than once in the same object.',
            "fields": {},
        }
    }
    assert _snapshot(pilot) == before
