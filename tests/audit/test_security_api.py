"""The security events API: auditors and security officers only, filters, and counts per kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from approvals.audit import security
from approvals.audit.choices import SecurityEventKind
from approvals.audit.security import security_event
from ota_project.roles import Role

pytestmark = pytest.mark.django_db

LIST = "/api/v1/audit/security-events/"
SUMMARY = "/api/v1/audit/security-events/summary/"
READERS = (Role.AUDITOR, Role.SECURITY_OFFICER)
K = SecurityEventKind


@pytest.fixture
def events(monkeypatch):
    """Refusals now, three hours ago and three days ago, of three kinds."""
    now = datetime.now(UTC)
    for age, kind, source, serial in (
        (timedelta(0), K.DEVICE_AUTH_FAILED, "device_api.auth", "A"),
        (timedelta(0), K.DEVICE_AUTH_FAILED, "device_api.auth", "A"),
        (timedelta(hours=3), K.DEVICE_REPLAY, "device_api.status", "B"),
        (timedelta(days=3), K.DEVICE_CROSS_DEVICE, "device_api.status", "C"),
    ):
        monkeypatch.setattr(security.timezone, "now", lambda age=age: now - age)
        security_event(kind=kind, source=source, message="refused", device_serial=serial, address="192.0.2.1")
    monkeypatch.undo()
    return now


@pytest.mark.parametrize("role", READERS)
def test_auditors_and_security_officers_list_the_events(events, client_for, make_user, role):
    response = client_for(make_user(role)).get(LIST)
    assert response.status_code == 200
    rows = response.json()["results"]
    assert [(r["kind"], r["count"], r["device_serial"]) for r in rows] == [
        ("device_auth_failed", 2, "A"),
        ("device_replay", 1, "B"),
        ("device_cross_device", 1, "C"),
    ]
    assert rows[0]["severity"] == "medium" and rows[2]["severity"] == "high"


@pytest.mark.parametrize("role", [r for r in Role.values if r not in READERS])
def test_other_roles_get_403(events, client_for, make_user, role):
    for url in (LIST, SUMMARY):
        response = client_for(make_user(role, username=f"{role}-{url[-9:-1]}")).get(url)
        assert response.status_code == 403 and set(response.json()) == {"error"}


def test_anonymous_gets_401(events, client_for):
    assert client_for(None).get(LIST).status_code == 401
    assert client_for(None).get(SUMMARY).status_code == 401


def test_filters_by_kind_source_and_since(events, client_for, auditor):
    client = client_for(auditor)

    def kinds(**params) -> list[str]:
        response = client.get(LIST, params)
        assert response.status_code == 200, response.json()
        return [row["kind"] for row in response.json()["results"]]

    assert kinds(kind="device_replay") == ["device_replay"]
    assert kinds(kind=["device_replay", "device_cross_device"]) == ["device_replay", "device_cross_device"]
    assert kinds(source="device_api.status") == ["device_replay", "device_cross_device"]
    since = (events - timedelta(hours=4)).isoformat()
    assert kinds(since=since) == ["device_auth_failed", "device_replay"]
    bad = client.get(LIST, {"kind": "nope", "since": "yesterday"})
    assert bad.status_code == 400 and set(bad.json()["error"]["fields"]) == {"kind", "since"}


def test_summary_counts_every_kind_over_a_day_and_a_week(events, client_for, security_officer):
    body = client_for(security_officer).get(SUMMARY).json()
    counts = {row["kind"]: (row["last_24h"], row["last_7d"]) for row in body["kinds"]}
    assert set(counts) == set(K.values)
    assert counts["device_auth_failed"] == (2, 2)
    assert counts["device_replay"] == (1, 1)
    assert counts["device_cross_device"] == (0, 1)
    assert counts["login_locked_out"] == (0, 0)
    assert (body["total_24h"], body["total_7d"]) == (3, 4)
    assert body["kinds"][0]["kind"] == "device_cross_device"  # the most severe kind with events comes first


def test_reading_the_events_records_no_event(events, client_for, auditor):
    client_for(auditor).get(LIST)
    assert sum(row["count"] for row in client_for(auditor).get(LIST).json()["results"]) == 4
