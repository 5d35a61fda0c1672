"""Telemetry batches: accepted once (202), folded into KPI samples by the Celery task, strict and bounded."""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from devices import telemetry
from devices.models import CohortTelemetryAggregate, ReleaseTelemetryAggregate, TelemetryBatch, TelemetrySample
from devices.selectors import device_telemetry_summary, telemetry_deployment_kpis
from rollouts.models import Deployment
from tests.support.transactions import transaction_held

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("eager_celery")]

TELEMETRY = "/device/v1/telemetry/"


def _sample(deployment_id: int | None = None, **kpis: object) -> dict[str, object]:
    return {"deployment_id": deployment_id, "reported_at": "2026-01-05T10:00:00Z", **kpis}


def _post(client, body, capture):
    with capture(execute=True):
        return client.post(TELEMETRY, body, format="json")


def test_batch_is_accepted_and_folded_into_kpi_samples(offered, pilot, django_capture_on_commit_callbacks):
    deployment_id = Deployment.objects.get(device=pilot).pk
    full = _sample(
        deployment_id,
        install_duration_s=312,
        boot_time_s=41,
        unexpected_reboots=1,
        gps_fix_s=28,
        sensor_calibrated=False,
        link_kbps=2400,
    )
    empty = {"reported_at": "2026-01-05T11:00:00Z"}  # carries no KPI: dropped
    response = _post(offered, {"batch_id": "b-1", "samples": [full, empty, full]}, django_capture_on_commit_callbacks)
    assert response.status_code == 202
    assert response.json() == {"accepted": 3, "batch_id": "b-1", "duplicate": False}
    stored = TelemetrySample.objects.get(device=pilot)
    assert (stored.deployment_id, stored.install_duration_s, stored.boot_time_s) == (deployment_id, 312, 41)
    assert (stored.unexpected_reboots, stored.gps_fix_s, stored.sensor_calibrated, stored.link_kbps) == (
        1,
        28,
        False,
        2400,
    )
    batch = TelemetryBatch.objects.get(device=pilot, batch_id="b-1")
    assert batch.processed_at is not None and batch.stored_count == 1
    assert batch.samples is None  # the raw batch is not kept once processed
    kpis = telemetry_deployment_kpis(deployment_ids=[deployment_id])
    assert kpis["samples"] == 1 and kpis["mean_boot_time_s"] == 41.0 and kpis["unexpected_reboots"] == 1
    assert kpis["sensor_uncalibrated"] == 1 and kpis["sensor_reports"] == 1
    assert device_telemetry_summary(device=pilot)["mean_link_kbps"] == 2400.0


def test_batch_resent_after_a_dropped_response_counts_once(offered, pilot, django_capture_on_commit_callbacks):
    body = {"batch_id": "2026-01-05T10:00:00Z-7", "samples": [_sample(boot_time_s=40), _sample(link_kbps=900)]}
    first = _post(offered, body, django_capture_on_commit_callbacks)
    again = _post(offered, body, django_capture_on_commit_callbacks)
    assert first.status_code == again.status_code == 202
    assert (first.json()["duplicate"], again.json()["duplicate"]) == (False, True)
    assert TelemetrySample.objects.filter(device=pilot).count() == 2
    assert TelemetryBatch.objects.filter(device=pilot).count() == 1


def test_accepting_a_batch_is_authentication_and_one_insert(offered, pilot):
    samples = [_sample(boot_time_s=40 + i) | {"reported_at": f"2026-01-05T10:{i:02d}:00Z"} for i in range(50)]
    with CaptureQueriesContext(connection) as queries:
        answer = offered.post(TELEMETRY, {"batch_id": "b-1", "samples": samples}, format="json")
    assert answer.status_code == 202 and answer.json()["accepted"] == 50
    statements = [query["sql"] or "" for query in queries.captured_queries]
    # The credential's query, then the insert: one statement, its own transaction in the device API (no BEGIN and
    # COMMIT round trips; a duplicate is no error). No sample names a deployment, so no deployment is looked up.
    assert len(statements) == 2, statements
    assert not any("rollouts_deployment" in sql for sql in statements)
    assert TelemetryBatch.objects.get(device=pilot, batch_id="b-1").sample_count == 50


def test_batch_without_id_is_recognised_by_its_content(offered, pilot, django_capture_on_commit_callbacks):
    body = {"samples": [_sample(gps_fix_s=30)]}
    first = _post(offered, body, django_capture_on_commit_callbacks).json()
    again = _post(offered, body, django_capture_on_commit_callbacks).json()
    other = _post(offered, {"samples": [_sample(gps_fix_s=31)]}, django_capture_on_commit_callbacks).json()
    assert first["batch_id"].startswith("sha256:") and first["batch_id"] == again["batch_id"] != other["batch_id"]
    assert again["duplicate"] is True and other["duplicate"] is False
    assert list(TelemetrySample.objects.order_by("gps_fix_s").values_list("gps_fix_s", flat=True)) == [30, 31]


def test_the_same_batch_id_from_two_devices_is_two_batches(
    offered, pilot, other_pilot, device_client, django_capture_on_commit_callbacks
):
    body = {"batch_id": "1", "samples": [_sample(boot_time_s=40)]}
    assert _post(offered, body, django_capture_on_commit_callbacks).json()["duplicate"] is False
    other = device_client(other_pilot)
    assert _post(other, body, django_capture_on_commit_callbacks).json()["duplicate"] is False
    assert TelemetrySample.objects.filter(device__in=[pilot, other_pilot]).count() == 2


def test_a_redelivered_task_does_nothing(pilot):
    accepted = telemetry.telemetry_batch_accept(
        device=pilot, batch_id="x", samples=[{"reported_at": timezone.now(), "boot_time_s": 30}]
    )
    assert telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk) == 1
    assert telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk) is None
    assert TelemetrySample.objects.filter(device=pilot).count() == 1


def test_broker_outage_still_answers_202_and_the_batch_is_requeued_later(
    offered, pilot, django_capture_on_commit_callbacks
):
    body = {"batch_id": "late", "samples": [_sample(boot_time_s=50)]}
    with mock.patch.object(telemetry, "_enqueue", side_effect=ConnectionError("broker down")):
        response = _post(offered, body, django_capture_on_commit_callbacks)
    assert response.status_code == 202 and response.json()["duplicate"] is False
    batch = TelemetryBatch.objects.get(device=pilot, batch_id="late")
    assert batch.processed_at is None and not TelemetrySample.objects.exists()
    assert telemetry.telemetry_requeue_stale() == 0  # too fresh: its task may still be on the way
    later = timezone.now() + timedelta(seconds=telemetry.STALE_BATCH_SECONDS + 1)
    assert telemetry.telemetry_requeue_stale(now=later) == 1
    batch.refresh_from_db()
    assert batch.processed_at is not None
    assert TelemetrySample.objects.get(device=pilot).boot_time_s == 50


def test_resending_a_pending_batch_enqueues_it_again(offered, pilot, django_capture_on_commit_callbacks):
    body = {"batch_id": "pending", "samples": [_sample(boot_time_s=50)]}
    with mock.patch.object(telemetry, "_enqueue", side_effect=ConnectionError("broker down")):
        _post(offered, body, django_capture_on_commit_callbacks)
    again = _post(offered, body, django_capture_on_commit_callbacks)
    assert again.json()["duplicate"] is True
    assert TelemetrySample.objects.filter(device=pilot).count() == 1


def test_purge_keeps_only_the_retention_period(pilot, settings):
    settings.OTA_TELEMETRY_RETENTION_DAYS = 30
    settings.OTA_TELEMETRY_BATCH_KEEP_DAYS = 7
    now = timezone.now()
    old = telemetry.telemetry_batch_accept(
        device=pilot, batch_id="old", samples=[{"reported_at": now, "boot_time_s": 1}], now=now - timedelta(days=40)
    )
    fresh = telemetry.telemetry_batch_accept(
        device=pilot, batch_id="fresh", samples=[{"reported_at": now, "boot_time_s": 2}], now=now
    )
    telemetry.telemetry_batch_process(batch_pk=old.batch.pk)
    telemetry.telemetry_batch_process(batch_pk=fresh.batch.pk)
    TelemetrySample.objects.filter(boot_time_s=1).update(received_at=now - timedelta(days=31))
    assert telemetry.telemetry_purge(now=now) == {"samples": 1, "batches": 1}
    assert list(TelemetrySample.objects.values_list("boot_time_s", flat=True)) == [2]
    assert list(TelemetryBatch.objects.values_list("batch_id", flat=True)) == ["fresh"]


def test_telemetry_is_strict_and_bounded(offered, pilot, other_pilot, django_capture_on_commit_callbacks):
    other = Deployment.objects.get(device=other_pilot).pk
    bad = [
        {"samples": []},
        {"samples": [{"reported_at": "2026-01-05T10:00:00Z", "latitude": 48.1}]},
        {"samples": [{"reported_at": "2026-01-05T10:00:00Z", "boot_time_s": -4}]},
        {"samples": [{"reported_at": "2026-01-05T10:00:00Z", "deployment_id": other}]},
        {"samples": [{"reported_at": "2026-01-05T10:00:00Z", "deployment_id": 999_999}]},
        {"samples": [{"boot_time_s": 4}]},
        {"samples": [{"reported_at": "2026-01-05T10:00:00Z"}] * 501},
        {"samples": [], "extra": 1},
        {"batch_id": "", "samples": [_sample(boot_time_s=1)]},
        {"batch_id": "has space", "samples": [_sample(boot_time_s=1)]},
        {"batch_id": "x" * 65, "samples": [_sample(boot_time_s=1)]},
        {"samples": "not a list"},
        [],
    ]
    for body in bad:
        response = _post(offered, body, django_capture_on_commit_callbacks)
        assert response.status_code == 400, body
        assert response.json()["error"]["code"] == "invalid", body
    huge = {"samples": [{"reported_at": "2026-01-05T10:00:00Z", "link_kbps": 1}] * 5000}
    assert _post(offered, huge, django_capture_on_commit_callbacks).status_code == 413
    assert not TelemetrySample.objects.exists()
    assert not TelemetryBatch.objects.exists()


def _unsent_batch(device, batch_id: str) -> TelemetryBatch:
    """A batch whose task never reached the broker."""
    with mock.patch.object(telemetry, "_enqueue"):
        return telemetry.telemetry_batch_accept(
            device=device, batch_id=batch_id, samples=[{"reported_at": timezone.now(), "boot_time_s": 30}]
        ).batch


def test_each_requeue_of_a_batch_waits_twice_as_long(pilot):
    batch = _unsent_batch(pilot, "lost")
    start = timezone.now()
    with mock.patch.object(telemetry, "_enqueue") as enqueue:
        at = [start + timedelta(seconds=s) for s in (29, 31, 32, 90, 92, 211, 213)]
        counts = [telemetry.telemetry_requeue_stale(now=now) for now in at]
    # Stale 30 s after it arrived; then again 60 s after that requeue, then 120 s after the next.
    assert counts == [0, 1, 0, 0, 1, 0, 1]
    assert [c.args for c in enqueue.call_args_list] == [(batch.pk,)] * 3
    assert TelemetryBatch.objects.get(pk=batch.pk).requeue_count == 3


@pytest.mark.django_db(transaction=True)
def test_a_batch_a_worker_is_processing_is_not_requeued(pilot):
    locked, other = _unsent_batch(pilot, "in-progress"), _unsent_batch(pilot, "lost")
    later = timezone.now() + timedelta(seconds=telemetry.STALE_BATCH_SECONDS + 1)
    # What telemetry_batch_process does: hold the batch's row lock until its transaction commits.
    with transaction_held(lambda: TelemetryBatch.objects.select_for_update().get(pk=locked.pk)):
        with mock.patch.object(telemetry, "_enqueue") as enqueue:
            assert telemetry.telemetry_requeue_stale(now=later) == 1
        assert [c.args for c in enqueue.call_args_list] == [(other.pk,)]
    assert TelemetryBatch.objects.get(pk=locked.pk).requeue_count == 0


def test_a_bad_record_in_a_full_batch_is_named_and_refuses_the_whole_batch(
    offered, pilot, django_capture_on_commit_callbacks
):
    samples = [_sample(boot_time_s=40 + i % 10, sensor_calibrated=True) for i in range(500)]
    samples[3] = _sample(boot_time_s=3601)
    samples[417] = _sample(sensor_calibrated="perhaps", link_kbps=-1)
    response = _post(offered, {"samples": samples}, django_capture_on_commit_callbacks)
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]["samples"]
    assert set(fields) == {"3", "417"}
    assert set(fields["3"]) == {"boot_time_s"} and set(fields["417"]) == {"sensor_calibrated", "link_kbps"}
    assert not TelemetryBatch.objects.exists() and not TelemetrySample.objects.exists()


def test_batch_validation_agrees_with_the_sample_serializer():
    """The tight loop accepts only what the serializer accepts, with the same values; the rest goes to it."""
    import random

    from rest_framework import serializers

    from devices.edge.serializers import TelemetryInputSerializer, TelemetrySampleSerializer, TelemetrySamplesField

    values: list[Any] = [None, 0, 1, -1, 41, 3600, 3601, True, False, "12", 12.0, "x", [], 10**20, 7 * 86400]
    times = [
        "2026-01-05T10:00:00Z",
        "2026-01-05T10:00:00+02:00",
        "2026-01-05T10:00:00",
        "yesterday",
        "2026-01-05",
        "2026-01-05 10:00:00.123456+00:00",
        None,
        5,
        "0001-01-01T00:00:00+01:00",
    ]
    fields = [*telemetry.KPI_FIELDS, "deployment_id"]
    reference = serializers.ListField(child=TelemetrySampleSerializer())
    rnd = random.Random(10)
    fast = 0
    for _ in range(3000):
        samples = []
        for _ in range(rnd.randint(1, 3)):
            sample: dict[str, Any] = {"reported_at": rnd.choice(times)} if rnd.random() < 0.95 else {}
            sample.update({name: rnd.choice(values) for name in rnd.sample(fields, rnd.randint(0, 4))})
            if rnd.random() < 0.02:
                sample["latitude"] = 48.1
            samples.append(sample)
        body = TelemetryInputSerializer(data={"samples": samples})
        samples_field = body.fields["samples"]
        assert isinstance(samples_field, TelemetrySamplesField)
        fast += samples_field.batch_validate(samples) is not None
        try:
            expected = reference.run_validation(samples)
        except serializers.ValidationError as exc:
            assert not body.is_valid() and body.errors["samples"] == exc.detail, samples
        else:
            assert body.is_valid() and [dict(s) for s in body.validated_data["samples"]] == [
                dict(s) for s in expected
            ], samples
    assert fast > 50  # the tight loop did decide part of them


def test_a_batch_stored_as_json_before_the_copy_intake_is_folded_once(pilot):
    received = timezone.now()
    batch = TelemetryBatch.objects.create(
        device=pilot,
        batch_id="before-copy",
        received_at=received,
        sample_count=3,
        samples=[
            {"reported_at": "2026-01-05T10:00:00+00:00", "boot_time_s": 38, "sensor_calibrated": True},
            {"reported_at": "2026-01-05T10:00:00+00:00", "boot_time_s": 38, "sensor_calibrated": True},
            {"reported_at": "2026-01-05T10:05:00+00:00"},
        ],
    )
    assert telemetry.telemetry_batch_process(batch_pk=batch.pk) == 1
    assert telemetry.telemetry_batch_process(batch_pk=batch.pk) is None
    stored = TelemetrySample.objects.get(device=pilot)
    assert (stored.boot_time_s, stored.sensor_calibrated, stored.received_at) == (38, True, received)
    batch.refresh_from_db()
    assert batch.samples is None and batch.rows == "" and batch.stored_count == 1


def test_samples_count_toward_their_deployments_wave_or_the_installed_release(
    offered, pilot, django_capture_on_commit_callbacks
):
    deployment = Deployment.objects.get(device=pilot)
    body = {"batch_id": "att-1", "samples": [_sample(deployment.pk, gps_fix_s=40), _sample(None, gps_fix_s=25)]}
    assert _post(offered, body, django_capture_on_commit_callbacks).status_code == 202
    attributed = dict(TelemetrySample.objects.filter(device=pilot).values_list("gps_fix_s", "cohort"))
    versions = dict(TelemetrySample.objects.filter(device=pilot).values_list("gps_fix_s", "release_version"))
    assert attributed == {40: f"wave:{deployment.wave_id}", 25: ""}
    assert versions == {40: deployment.release.version, 25: pilot.installed_version}
    cohort = CohortTelemetryAggregate.objects.get(cohort=f"wave:{deployment.wave_id}", indicator="gps_fix_s")
    assert (cohort.n, int(cohort.total)) == (1, 40)
    baseline = ReleaseTelemetryAggregate.objects.get(release_version=pilot.installed_version, indicator="gps_fix_s")
    assert (baseline.n, int(baseline.total)) == (1, 25)
