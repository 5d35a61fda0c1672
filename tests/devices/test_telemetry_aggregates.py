"""Telemetry aggregates: maintained in the transaction that stores the samples, equal to a direct computation over
the raw samples, safe under concurrent batches, and kept when the raw samples are purged."""

from __future__ import annotations

import threading
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import pytest
from django.db import connection, transaction
from django.test import override_settings
from django.utils import timezone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import telemetry
from devices.models import (
    CohortTelemetryAggregate,
    DeviceTelemetryAggregate,
    ReleaseTelemetryAggregate,
    TelemetrySample,
)
from devices.telemetry import SampleAttribution
from devices.telemetry_aggregates import BASELINE_SAMPLES_PER_DEVICE, INDICATORS, Summary
from tests.factories import DeviceFactory, HardwareModelFactory, RegionFactory
from tests.support.transactions import transaction_held

pytestmark = pytest.mark.django_db

AT = datetime(2026, 1, 5, 10, tzinfo=UTC)


def _accept_and_process(device, samples, *, deployments=None, batch_id=None, now=None) -> int | None:
    accepted = telemetry.telemetry_batch_accept(
        device=device, samples=samples, batch_id=batch_id, deployments=deployments, now=now
    )
    return telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk)


def _value(indicator: str, sample: TelemetrySample) -> int | None:
    """The indicator of one stored sample, computed in Python (the reference the SQL fold must equal)."""
    if indicator == "unexpected_reboots":
        return None if sample.unexpected_reboots is None else int(sample.unexpected_reboots > 0)
    if indicator == "sensor_calibration_failures":
        return None if sample.sensor_calibrated is None else int(not sample.sensor_calibrated)
    value = getattr(sample, indicator)
    return None if value is None else int(value)


def _direct(
    key_of, *, first_per_deployment: bool = False, per_device_cap: int | None = None
) -> dict[tuple[Any, ...], Summary]:
    sums: dict[tuple[Any, ...], Summary] = defaultdict(Summary)
    seen: set[int] = set()
    taken: dict[tuple[Any, ...], int] = defaultdict(int)
    for sample in TelemetrySample.objects.select_related("device").order_by("pk"):
        if first_per_deployment:
            if sample.deployment_id in seen:
                continue
            if sample.deployment_id is not None:
                seen.add(sample.deployment_id)
        for indicator in INDICATORS:
            value = _value(indicator, sample)
            key = key_of(sample)
            if value is None or key is None:
                continue
            if per_device_cap is not None:
                taken[(sample.device_id, sample.release_version, indicator)] += 1
                if taken[(sample.device_id, sample.release_version, indicator)] > per_device_cap:
                    continue
            sums[(*key, indicator)] += Summary(1, value, value * value)
    return dict(sums)


def _stored(model, *fields: str) -> dict[tuple[Any, ...], Summary]:
    return {
        tuple(row[:-3]): Summary(row[-3], int(row[-2]), int(row[-1]))
        for row in model.objects.values_list(*fields, "indicator", "n", "total", "total_sq")
    }


_kpi = st.one_of(st.none(), st.integers(min_value=0, max_value=86_400))
_samples = st.lists(
    st.fixed_dictionaries(
        {
            "deployment_id": st.sampled_from([None, 1, 2]),
            "boot_time_s": st.one_of(st.none(), st.integers(0, 3600)),
            "unexpected_reboots": st.one_of(st.none(), st.integers(0, 10_000)),
            "install_duration_s": _kpi,
            "gps_fix_s": _kpi,
            "sensor_calibrated": st.one_of(st.none(), st.booleans()),
            "link_kbps": st.one_of(st.none(), st.integers(0, 10_000_000)),
            "minute": st.integers(0, 59),
        }
    ),
    min_size=1,
    max_size=30,
)


def three_devices() -> tuple[list[Any], dict[int, SampleAttribution]]:
    """Three devices on two hardware models, and the attribution of two deployments: deployment 1 belongs to a wave
    (a cohort), deployment 2 to a rollback (a release, no cohort)."""
    region = RegionFactory.create()
    models = [HardwareModelFactory.create(), HardwareModelFactory.create()]
    devices = [
        DeviceFactory.create(hardware_model=models[i % 2], region=region, installed_version=f"1.{i}.0")
        for i in range(3)
    ]
    return devices, {1: SampleAttribution("2.0.0", "wave:7"), 2: SampleAttribution("1.0.0")}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(st.integers(0, 2), _samples), min_size=1, max_size=5))
def test_aggregates_equal_a_direct_computation_over_the_raw_samples(batches):
    with transaction.atomic():
        devices, attribution = three_devices()
        for index, (device_index, samples) in enumerate(batches):
            body = [
                {k: v for k, v in s.items() if k != "minute"} | {"reported_at": AT + timedelta(minutes=s["minute"])}
                for s in samples
            ]
            _accept_and_process(
                devices[device_index], body, deployments=attribution, batch_id=f"b{index}", now=AT + timedelta(index)
            )
        per_device = _direct(lambda s: (s.device_id, s.release_version))
        # A release's baseline takes each device's first samples only.
        per_release = _direct(
            lambda s: (s.release_version, s.device.hardware_model_id), per_device_cap=BASELINE_SAMPLES_PER_DEVICE
        )
        # A wave counts the first sample of each deployment only.
        per_cohort = _direct(
            lambda s: (s.cohort, s.device.hardware_model_id) if s.cohort else None, first_per_deployment=True
        )
        assert _stored(DeviceTelemetryAggregate, "device_id", "release_version") == per_device
        assert _stored(ReleaseTelemetryAggregate, "release_version", "hardware_model_id") == per_release
        assert _stored(CohortTelemetryAggregate, "cohort", "hardware_model_id") == per_cohort
        # The attribution: a deployment's release and cohort, else the version the device runs.
        for sample in TelemetrySample.objects.select_related("device"):
            expected = {None: (sample.device.installed_version, ""), 1: ("2.0.0", "wave:7"), 2: ("1.0.0", "")}
            assert (sample.release_version, sample.cohort) == expected[sample.deployment_id]
        transaction.set_rollback(True)


def test_a_batch_folds_with_one_statement_in_the_samples_transaction(django_assert_num_queries):
    device = DeviceFactory.create(installed_version="1.0.0")
    accepted = telemetry.telemetry_batch_accept(
        device=device, samples=[{"reported_at": AT, "gps_fix_s": 30}, {"reported_at": AT, "gps_fix_s": 40}]
    )
    # Savepoint, claim the batch (lock, read, mark processed), the fold, release (the COPY is not a logged query).
    with django_assert_num_queries(4):
        assert telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk) == 2
    row = ReleaseTelemetryAggregate.objects.get(release_version="1.0.0", indicator="gps_fix_s")
    assert (row.n, int(row.total), int(row.total_sq)) == (2, 70, 30 * 30 + 40 * 40)


def test_a_redelivered_batch_is_not_counted_twice():
    device = DeviceFactory.create(installed_version="1.0.0")
    accepted = telemetry.telemetry_batch_accept(device=device, samples=[{"reported_at": AT, "boot_time_s": 20}])
    assert telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk) == 1
    assert telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk) is None
    assert DeviceTelemetryAggregate.objects.get(device=device, indicator="boot_time_s").n == 1


def test_a_batch_accepted_before_the_attribution_is_stored_and_counts_in_no_aggregate():
    device = DeviceFactory.create(installed_version="1.0.0")
    accepted = telemetry.telemetry_batch_accept(device=device, samples=[{"reported_at": AT, "boot_time_s": 20}])
    # The COPY text as the intake wrote it before the attribution columns.
    old_rows = "\t".join(accepted.batch.rows.rstrip("\n").split("\t")[: len(telemetry.UNATTRIBUTED_COPY_COLUMNS)])
    type(accepted.batch).objects.filter(pk=accepted.batch.pk).update(rows=old_rows + "\n")
    assert telemetry.telemetry_batch_process(batch_pk=accepted.batch.pk) == 1
    assert TelemetrySample.objects.get(device=device).release_version == ""
    assert not ReleaseTelemetryAggregate.objects.exists()


def test_purge_deletes_old_samples_and_keeps_the_aggregates(settings):
    settings.OTA_TELEMETRY_RETENTION_DAYS = 30
    device = DeviceFactory.create(installed_version="1.0.0")
    long_ago = timezone.now() - timedelta(days=31)
    _accept_and_process(device, [{"reported_at": long_ago, "gps_fix_s": 50}], now=long_ago)
    _accept_and_process(device, [{"reported_at": timezone.now(), "gps_fix_s": 10}])
    before = _stored(ReleaseTelemetryAggregate, "release_version", "hardware_model_id")
    assert telemetry.telemetry_purge()["samples"] == 1
    assert list(TelemetrySample.objects.values_list("gps_fix_s", flat=True)) == [10]
    assert _stored(ReleaseTelemetryAggregate, "release_version", "hardware_model_id") == before
    assert DeviceTelemetryAggregate.objects.get(device=device, indicator="gps_fix_s").n == 2


@pytest.mark.django_db(transaction=True)
@override_settings(OTA_TELEMETRY_FOLD_BATCHES=1)  # two folds at once (together, one task would fold both)
def test_two_batches_on_the_same_aggregate_row_both_count():
    model = HardwareModelFactory.create()
    first, second = DeviceFactory.create_batch(2, hardware_model=model, installed_version="1.0.0")
    with mock.patch.object(telemetry, "_enqueue"):  # processed below, by hand, in two overlapping transactions
        batches = [
            telemetry.telemetry_batch_accept(device=device, samples=[{"reported_at": AT, "gps_fix_s": value}]).batch.pk
            for device, value in ((first, 30), (second, 50))
        ]
    errors: list[BaseException] = []

    def second_batch() -> None:
        try:
            telemetry.telemetry_batch_process(batch_pk=batches[1])
        except BaseException as exc:  # noqa: BLE001 - reported by the test below
            errors.append(exc)
        finally:
            connection.close()

    # The first batch's transaction folds, then stays open holding the aggregate rows' locks.
    with transaction_held(lambda: telemetry.telemetry_batch_process(batch_pk=batches[0])):
        other = threading.Thread(target=second_batch)
        other.start()
        other.join(0.5)
        assert other.is_alive()  # waits on the aggregate row the first transaction holds, instead of losing an update
    other.join(10)
    assert not errors
    row = ReleaseTelemetryAggregate.objects.get(release_version="1.0.0", hardware_model=model, indicator="gps_fix_s")
    assert (row.n, int(row.total), int(row.total_sq)) == (2, 80, 30 * 30 + 50 * 50)


def test_a_release_baseline_takes_only_each_devices_first_samples():
    model = HardwareModelFactory.create()
    flooder, quiet = DeviceFactory.create_batch(2, hardware_model=model, installed_version="1.0.0")
    for batch in range(3):  # 45 samples of 1000 s from one unit
        samples = [{"reported_at": AT + timedelta(minutes=i), "gps_fix_s": 1000} for i in range(15)]
        _accept_and_process(flooder, samples, batch_id=f"flood-{batch}")
    _accept_and_process(quiet, [{"reported_at": AT, "gps_fix_s": 30}])
    baseline = ReleaseTelemetryAggregate.objects.get(
        release_version="1.0.0", hardware_model=model, indicator="gps_fix_s"
    )
    assert (baseline.n, int(baseline.total)) == (
        BASELINE_SAMPLES_PER_DEVICE + 1,
        BASELINE_SAMPLES_PER_DEVICE * 1000 + 30,
    )
    assert (
        DeviceTelemetryAggregate.objects.get(device=flooder, indicator="gps_fix_s").n == 45
    )  # its own history is whole
