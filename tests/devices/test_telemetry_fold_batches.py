"""A telemetry task folds its own batch with the other batches waiting (bounded, never one another worker holds), in
one transaction: the aggregates equal those of folding the batches one by one, each batch is stored exactly once,
the other batches' own task messages then do nothing, and a fold that fails leaves every batch it claimed waiting."""

from __future__ import annotations

from datetime import timedelta
from unittest import mock

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices import telemetry
from devices.models import (
    CohortTelemetryAggregate,
    DeviceTelemetryAggregate,
    ReleaseTelemetryAggregate,
    TelemetryBatch,
    TelemetrySample,
)
from devices.telemetry import SampleAttribution
from devices.telemetry_aggregates import BASELINE_SAMPLES_PER_DEVICE
from tests.devices.test_telemetry_aggregates import AT, _direct, _samples, _stored, three_devices
from tests.factories import DeviceFactory, HardwareModelFactory
from tests.support.transactions import transaction_held

pytestmark = pytest.mark.django_db


def _accept(device, samples, **kwargs) -> int:
    """Accept a batch without running its task (as when the workers are behind): its pk."""
    with mock.patch.object(telemetry, "_enqueue"):
        return telemetry.telemetry_batch_accept(device=device, samples=samples, **kwargs).batch.pk


def _unprocessed() -> set[int]:
    return set(TelemetryBatch.objects.filter(processed_at__isnull=True).values_list("pk", flat=True))


def _all_aggregates():
    return (
        _stored(DeviceTelemetryAggregate, "device_id", "release_version"),
        _stored(ReleaseTelemetryAggregate, "release_version", "hardware_model_id"),
        _stored(CohortTelemetryAggregate, "cohort", "hardware_model_id"),
    )


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batches=st.lists(st.tuples(st.integers(0, 2), _samples), min_size=2, max_size=6))
def test_batches_folded_together_equal_a_direct_computation_over_the_raw_samples(batches):
    with transaction.atomic():
        devices, attribution = three_devices()
        pks = [
            _accept(
                devices[device_index],
                [
                    {k: v for k, v in s.items() if k != "minute"} | {"reported_at": AT + timedelta(minutes=s["minute"])}
                    for s in samples
                ],
                deployments=attribution,
                batch_id=f"b{index}",
                now=AT + timedelta(index),
            )
            for index, (device_index, samples) in enumerate(batches)
        ]
        # One task: its batch and every other one waiting, in one transaction.
        telemetry.telemetry_batch_process(batch_pk=pks[-1])
        assert not _unprocessed()
        assert all(telemetry.telemetry_batch_process(batch_pk=pk) is None for pk in pks)
        assert _stored(DeviceTelemetryAggregate, "device_id", "release_version") == _direct(
            lambda s: (s.device_id, s.release_version)
        )
        assert _stored(ReleaseTelemetryAggregate, "release_version", "hardware_model_id") == _direct(
            lambda s: (s.release_version, s.device.hardware_model_id), per_device_cap=BASELINE_SAMPLES_PER_DEVICE
        )
        assert _stored(CohortTelemetryAggregate, "cohort", "hardware_model_id") == _direct(
            lambda s: (s.cohort, s.device.hardware_model_id) if s.cohort else None, first_per_deployment=True
        )
        transaction.set_rollback(True)


def test_folding_together_adds_exactly_what_folding_one_by_one_adds(settings):
    """Across the baseline cap (one device's samples over several batches) and the first sample of a deployment."""
    model = HardwareModelFactory.create()
    flooder, other = DeviceFactory.create_batch(2, hardware_model=model, installed_version="1.0.0")
    wave = {7: SampleAttribution("2.0.0", "wave:1")}
    pks = []
    for batch in range(3):
        samples = [{"reported_at": AT + timedelta(minutes=i), "gps_fix_s": 100 * batch + i} for i in range(9)]
        samples.append({"reported_at": AT, "deployment_id": 7, "boot_time_s": 40 + batch})
        pks.append(_accept(flooder, samples, batch_id=f"f{batch}", deployments=wave))
        pks.append(_accept(other, [{"reported_at": AT, "gps_fix_s": 5 + batch}], batch_id=f"o{batch}"))

    with transaction.atomic():
        settings.OTA_TELEMETRY_FOLD_BATCHES = 1
        for pk in pks:
            assert telemetry.telemetry_batch_process(batch_pk=pk) is not None
        one_by_one = _all_aggregates()
        transaction.set_rollback(True)

    settings.OTA_TELEMETRY_FOLD_BATCHES = 20
    assert telemetry.telemetry_batch_process(batch_pk=pks[0]) == 10  # its own batch's samples
    assert not _unprocessed()
    assert _all_aggregates() == one_by_one
    baseline = ReleaseTelemetryAggregate.objects.get(
        release_version="1.0.0", hardware_model=model, indicator="gps_fix_s"
    )
    assert baseline.n == BASELINE_SAMPLES_PER_DEVICE + 3  # the flooder's first 20 of 27, and the other's 3
    wave_boot = CohortTelemetryAggregate.objects.get(cohort="wave:1", indicator="boot_time_s")
    assert (wave_boot.n, int(wave_boot.total)) == (1, 40)  # one sample per deployment: the first stored
    assert TelemetrySample.objects.count() == 3 * 10 + 3


def test_the_other_batches_messages_do_nothing_and_nothing_is_stored_twice():
    device = DeviceFactory.create(installed_version="1.0.0")
    pks = [_accept(device, [{"reported_at": AT, "boot_time_s": 10 + i}], batch_id=f"b{i}") for i in range(4)]
    assert telemetry.telemetry_batch_process(batch_pk=pks[2]) == 1
    assert not _unprocessed()
    assert [telemetry.telemetry_batch_process(batch_pk=pk) for pk in pks] == [None] * 4
    assert set(TelemetrySample.objects.values_list("boot_time_s", flat=True)) == {10, 11, 12, 13}
    assert list(TelemetryBatch.objects.order_by("pk").values_list("stored_count", flat=True)) == [1] * 4
    row = DeviceTelemetryAggregate.objects.get(device=device, indicator="boot_time_s")
    assert (row.n, int(row.total)) == (4, 46)


def test_a_task_folds_at_most_the_configured_number_of_batches_oldest_first(settings):
    settings.OTA_TELEMETRY_FOLD_BATCHES = 3
    device = DeviceFactory.create()
    pks = [
        _accept(device, [{"reported_at": AT, "link_kbps": i}], batch_id=f"b{i}", now=AT + timedelta(seconds=i))
        for i in range(6)
    ]
    assert telemetry.telemetry_batch_process(batch_pk=pks[5]) == 1
    assert _unprocessed() == set(pks[2:5])  # its own and the two oldest waiting
    assert telemetry.telemetry_batch_process(batch_pk=pks[4]) == 1
    assert not _unprocessed()
    assert TelemetrySample.objects.count() == 6


def test_a_failed_fold_leaves_every_batch_it_claimed_waiting_then_folds_them_once():
    device = DeviceFactory.create(installed_version="1.0.0")
    pks = [_accept(device, [{"reported_at": AT, "gps_fix_s": 30 + i}], batch_id=f"b{i}") for i in range(3)]
    with (
        mock.patch.object(telemetry, "_copy_samples", side_effect=RuntimeError("worker died")),
        pytest.raises(RuntimeError),
    ):
        telemetry.telemetry_batch_process(batch_pk=pks[0])
    assert _unprocessed() == set(pks)
    assert not TelemetrySample.objects.exists()
    assert telemetry.telemetry_batch_process(batch_pk=pks[1]) == 1
    assert not _unprocessed()
    row = DeviceTelemetryAggregate.objects.get(device=device, indicator="gps_fix_s")
    assert (row.n, int(row.total)) == (3, 30 + 31 + 32)


def test_a_corrupt_batch_waiting_fails_only_its_own_task():
    device = DeviceFactory.create(installed_version="1.0.0")
    corrupt = _accept(device, [{"reported_at": AT, "gps_fix_s": 1}], batch_id="corrupt")
    # A legacy batch (JSON samples) whose time cannot be read: storing it fails.
    TelemetryBatch.objects.filter(pk=corrupt).update(rows="", samples=[{"reported_at": "yesterday", "gps_fix_s": 1}])
    good = _accept(device, [{"reported_at": AT, "gps_fix_s": 2}], batch_id="good")
    assert telemetry.telemetry_batch_process(batch_pk=good) == 1  # its fold with the corrupt one failed: alone
    assert _unprocessed() == {corrupt}
    with pytest.raises(ValueError):
        telemetry.telemetry_batch_process(batch_pk=corrupt)
    assert _unprocessed() == {corrupt}
    assert list(TelemetrySample.objects.values_list("gps_fix_s", flat=True)) == [2]


def test_unattributed_and_attributed_batches_fold_together():
    device = DeviceFactory.create(installed_version="1.0.0")
    old = _accept(device, [{"reported_at": AT, "boot_time_s": 20}], batch_id="old")
    batch = TelemetryBatch.objects.get(pk=old)
    # The COPY text as the intake wrote it before the attribution columns.
    old_rows = "\t".join(batch.rows.rstrip("\n").split("\t")[: len(telemetry.UNATTRIBUTED_COPY_COLUMNS)])
    TelemetryBatch.objects.filter(pk=old).update(rows=old_rows + "\n")
    new = _accept(device, [{"reported_at": AT, "boot_time_s": 30}], batch_id="new")
    assert telemetry.telemetry_batch_process(batch_pk=new) == 1
    assert not _unprocessed()
    assert sorted(TelemetrySample.objects.values_list("boot_time_s", "release_version")) == [
        (20, ""),
        (30, "1.0.0"),
    ]
    row = DeviceTelemetryAggregate.objects.get(device=device, indicator="boot_time_s")
    assert (row.n, int(row.total)) == (1, 30)  # the unattributed batch counts in no aggregate


@pytest.mark.django_db(transaction=True)
def test_a_batch_another_worker_holds_is_skipped_without_waiting():
    device = DeviceFactory.create(installed_version="1.0.0")
    held, mine = (_accept(device, [{"reported_at": AT, "gps_fix_s": v}], batch_id=f"b{v}") for v in (10, 20))
    # Another worker in the middle of its fold: it holds the batch's row lock until it commits.
    with transaction_held(lambda: TelemetryBatch.objects.select_for_update().get(pk=held)):
        assert telemetry.telemetry_batch_process(batch_pk=mine) == 1  # would block here if it waited for `held`
        assert _unprocessed() == {held}
    assert telemetry.telemetry_batch_process(batch_pk=held) == 1
    row = DeviceTelemetryAggregate.objects.get(device=device, indicator="gps_fix_s")
    assert (row.n, int(row.total)) == (2, 30)


@pytest.mark.django_db(transaction=True)
def test_the_message_of_a_batch_being_folded_returns_at_once_and_the_fold_stands_or_is_redone():
    device = DeviceFactory.create(installed_version="1.0.0")
    batch = _accept(device, [{"reported_at": AT, "gps_fix_s": 10}], batch_id="b")

    def fold() -> None:
        assert telemetry.telemetry_batch_process(batch_pk=batch) == 1

    # A worker folds the batch, then dies before its commit (its transaction rolls back).
    with transaction_held(fold, rollback=True):
        assert telemetry.telemetry_batch_process(batch_pk=batch) is None  # held: no wait, nothing done
    assert _unprocessed() == {batch}
    assert not TelemetrySample.objects.exists()
    assert telemetry.telemetry_batch_process(batch_pk=batch) == 1  # the redelivered message
    assert telemetry.telemetry_batch_process(batch_pk=batch) is None
    row = DeviceTelemetryAggregate.objects.get(device=device, indicator="gps_fix_s")
    assert (row.n, int(row.total)) == (1, 10)
