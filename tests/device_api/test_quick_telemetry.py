"""Telemetry on the short path (devices.edge.telemetry_quick): an accepted batch is the identity statement and the
accept's INSERT, answered before the middleware chain and DRF, exactly as the full view answers it; everything the
short path declines is answered by the full view (400 naming the fields, 401, security events), nothing stored first.
"""

from __future__ import annotations

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.credentials import device_credential_revoke
from devices.models import TelemetryBatch, TelemetrySample
from rollouts.models import Deployment

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_celery")]

TELEMETRY = "/device/v1/telemetry/"


def _samples(count: int, deployment_id: int | None = None) -> list[dict[str, object]]:
    return [
        {"deployment_id": deployment_id, "reported_at": f"2026-01-05T10:{i:02d}:00Z", "boot_time_s": 40 + i}
        for i in range(count)
    ]


def _without_short_path(settings) -> None:
    settings.MIDDLEWARE = [m for m in settings.MIDDLEWARE if not m.endswith("DeviceShortPathMiddleware")]


def test_an_accepted_batch_is_two_statements_before_the_chain_and_answers_as_the_view(
    offered, pilot, device_client, settings, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as enqueued, CaptureQueriesContext(connection) as queries:
        short = offered.post(TELEMETRY, {"batch_id": "b-1", "samples": _samples(50)}, format="json")
    for enqueue in enqueued:  # the task's own statements, counted apart
        enqueue()
    assert short.status_code == 202
    assert short.json() == {"accepted": 50, "batch_id": "b-1", "duplicate": False}
    # XFrameOptionsMiddleware (further down the chain) marks every answer it sees: the short path's it never saw.
    assert "X-Frame-Options" not in short
    # The identity statement, then the accept's one INSERT (its own transaction: no BEGIN/COMMIT round trips).
    statements = [query["sql"] or "" for query in queries.captured_queries]
    assert len(statements) == 2, statements
    assert TelemetrySample.objects.filter(device=pilot).count() == 50
    _without_short_path(settings)
    with django_capture_on_commit_callbacks(execute=True):
        full = device_client(pilot).post(TELEMETRY, {"batch_id": "b-1", "samples": _samples(50)}, format="json")
    assert full.status_code == 202 and full["X-Frame-Options"] == "DENY"
    assert full.json() == {"accepted": 50, "batch_id": "b-1", "duplicate": True}


def test_samples_naming_the_devices_deployment_cost_one_more_statement_and_are_attributed(
    offered, pilot, django_capture_on_commit_callbacks
):
    deployment = Deployment.objects.select_related("release").get(device=pilot)
    with django_capture_on_commit_callbacks() as enqueued, CaptureQueriesContext(connection) as queries:
        answer = offered.post(TELEMETRY, {"samples": _samples(3, deployment.pk)}, format="json")
    for enqueue in enqueued:
        enqueue()
    assert answer.status_code == 202 and "X-Frame-Options" not in answer
    assert len(queries.captured_queries) == 3
    stored = TelemetrySample.objects.filter(device=pilot)
    assert {(s.deployment_id, s.release_version) for s in stored} == {(deployment.pk, deployment.release.version)}


def test_a_resent_batch_is_a_duplicate_on_the_short_path_and_counts_once(
    offered, pilot, django_capture_on_commit_callbacks
):
    body = {"samples": _samples(4)}  # no batch id: recognised by its content
    with django_capture_on_commit_callbacks(execute=True):
        first = offered.post(TELEMETRY, body, format="json")
        again = offered.post(TELEMETRY, body, format="json")
    assert first.status_code == again.status_code == 202
    assert "X-Frame-Options" not in again
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert first.json()["batch_id"] == again.json()["batch_id"]
    assert TelemetryBatch.objects.filter(device=pilot).count() == 1
    assert TelemetrySample.objects.filter(device=pilot).count() == 4


def test_what_the_short_path_declines_the_view_refuses_with_nothing_stored(
    offered, pilot, other_pilot, django_capture_on_commit_callbacks
):
    other = Deployment.objects.get(device=other_pilot).pk
    bad = {"samples": [{"reported_at": "2026-01-05T10:00:00Z", "boot_time_s": -4, "latitude": 48.1}]}
    with django_capture_on_commit_callbacks(execute=True):
        refused = offered.post(TELEMETRY, bad, format="json")
        crossing = offered.post(TELEMETRY, {"samples": _samples(2, other)}, format="json")
        malformed = offered.post(TELEMETRY, b"{not json", content_type="application/json")
    assert refused.status_code == 400 and refused["X-Frame-Options"] == "DENY"  # the full view answered
    assert refused.json()["error"]["code"] == "invalid" and set(refused.json()["error"]["fields"]) == {"samples"}
    assert crossing.status_code == 400 and crossing["X-Frame-Options"] == "DENY"
    assert crossing.json()["error"]["fields"] == {"samples": [f"Unknown deployment {other}."]}
    assert malformed.status_code == 400 and malformed["X-Frame-Options"] == "DENY"
    # Another device's deployment is recorded once (by the full path), never twice.
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_CROSS_DEVICE).count() == 1
    assert not TelemetryBatch.objects.exists() and not TelemetrySample.objects.exists()


def test_a_revoked_credential_is_refused_at_once_by_the_full_path(
    offered, pilot, operator, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        assert offered.post(TELEMETRY, {"batch_id": "b-1", "samples": _samples(1)}, format="json").status_code == 202
    device_credential_revoke(actor=operator, device=pilot, reason="unit stolen")
    refused = offered.post(TELEMETRY, {"batch_id": "b-2", "samples": _samples(1)}, format="json")
    assert refused.status_code == 401 and refused["X-Frame-Options"] == "DENY"
    assert refused.json()["error"]["code"] == "authentication_failed"
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_AUTH_FAILED, device_serial=pilot.serial).exists()
    assert list(TelemetryBatch.objects.filter(device=pilot).values_list("batch_id", flat=True)) == ["b-1"]


def test_no_or_a_malformed_credential_or_no_length_goes_to_the_full_path(offered, pilot, client):
    body = b'{"samples": [{"reported_at": "2026-01-05T10:00:00Z", "boot_time_s": 1}]}'
    anonymous = client.post(TELEMETRY, body, content_type="application/json")
    malformed = client.post(TELEMETRY, body, content_type="application/json", HTTP_AUTHORIZATION="Device nocolon")
    assert anonymous.status_code == malformed.status_code == 401
    assert anonymous["X-Frame-Options"] == malformed["X-Frame-Options"] == "DENY"
    huge = {"samples": [{"reported_at": "2026-01-05T10:00:00Z", "link_kbps": 1}] * 5000}
    too_large = offered.post(TELEMETRY, huge, format="json")
    assert too_large.status_code == 413 and too_large["X-Frame-Options"] == "DENY"
    assert not TelemetryBatch.objects.exists()
