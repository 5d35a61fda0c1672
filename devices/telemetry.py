"""Telemetry intake: a device's KPI batch is accepted once (idempotent on its batch id), then folded into samples
by a Celery task. Only what the health gates and KPIs need is kept (data minimisation: no positions, no raw batches
once processed, samples older than the retention period deleted)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone

from devices.models import Device, TelemetryBatch, TelemetrySample
from ota_project.errors import InvalidInput

logger = logging.getLogger(__name__)

# The measurements a sample may carry; a sample with none of them is dropped.
KPI_FIELDS = ("install_duration_s", "boot_time_s", "unexpected_reboots", "gps_fix_s", "sensor_calibrated", "link_kbps")
SAMPLE_FIELDS = ("deployment_id", "reported_at", *KPI_FIELDS)
MAX_BATCH_SAMPLES = 500
DEFAULT_RETENTION_DAYS = 90
DEFAULT_BATCH_KEEP_DAYS = 14
# A batch still unprocessed this long after its task was sent, and not being processed right now, lost its task
# (broker down at accept time, worker killed, retries exhausted): enqueue it again. Each further requeue of the same
# batch waits twice as long (up to an hour), so a backlogged queue is not flooded with copies of its own messages.
STALE_BATCH_SECONDS = 30
MAX_STALE_BATCH_SECONDS = 3600
REQUEUE_LIMIT = 1000
# The purge deletes in chunks within a time budget, well inside the Celery time limit; the rest waits an hour.
PURGE_CHUNK = 5000
PURGE_BUDGET_SECONDS = 10.0


@dataclass(frozen=True)
class BatchAcceptance:
    """The outcome of accepting a batch: the batch record and whether it had been accepted before."""

    batch: TelemetryBatch
    duplicate: bool


_SAMPLE_FIELD_SET = frozenset(SAMPLE_FIELDS)


def _jsonable(sample: dict[str, Any]) -> dict[str, Any]:
    if not _SAMPLE_FIELD_SET.issuperset(sample):
        unknown = set(sample) - _SAMPLE_FIELD_SET
        raise InvalidInput("A telemetry sample has unknown fields.", fields={"samples": sorted(unknown)[:20]})
    reported_at = sample.get("reported_at")
    if not isinstance(reported_at, datetime) or reported_at.utcoffset() is None:
        raise InvalidInput("Every sample needs a timezone-aware reported_at.", fields={"samples": ["reported_at"]})
    values = {key: value for key, value in sample.items() if value is not None}
    values["reported_at"] = reported_at.isoformat()
    return values


def content_batch_id(samples: list[dict[str, Any]]) -> str:
    """The batch id of a batch sent without one: the sha256 of its samples, so a re-send is recognised too."""
    canonical = json.dumps(samples, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _enqueue(batch_pk: int) -> None:
    from devices.tasks import telemetry_batch_process_task  # the task module imports this one

    telemetry_batch_process_task.delay(batch_pk)


@transaction.atomic
def telemetry_batch_accept(
    *, device: Device, samples: list[dict[str, Any]], batch_id: str | None = None, now: datetime | None = None
) -> BatchAcceptance:
    """Accept a device's KPI batch once per (device, batch id) and hand it to the Celery task after commit.

    A batch re-sent after a dropped response (same batch id, or same samples when the device sends no id) is
    recognised and not counted twice. Deployment ids are checked by the caller (the device API), since the
    inventory app does not know deployments.
    """
    if not samples or len(samples) > MAX_BATCH_SAMPLES:
        raise InvalidInput("A batch has 1 to 500 samples.", fields={"samples": ["1 to 500 samples."]})
    stored = [_jsonable(sample) for sample in samples]
    batch_id = batch_id or content_batch_id(stored)
    received_at = now or timezone.now()
    try:
        with transaction.atomic():
            batch = TelemetryBatch.objects.create(
                device=device,
                batch_id=batch_id,
                received_at=received_at,
                sample_count=len(stored),
                samples=stored,
                requeue_after=received_at + timedelta(seconds=STALE_BATCH_SECONDS),
            )
        duplicate = False
    except IntegrityError:
        batch = TelemetryBatch.objects.get(device=device, batch_id=batch_id)
        duplicate = True
    if batch.processed_at is None:
        # After commit, so the worker finds the row; a re-sent batch whose task was lost is enqueued again (the
        # task is idempotent). robust: a broker outage must not fail the device's request; the batch waits.
        pk = batch.pk
        transaction.on_commit(lambda: _enqueue(pk), robust=True)
    return BatchAcceptance(batch=batch, duplicate=duplicate)


# The columns the task writes with COPY, in this order; received_at is the task's clock (auto_now_add elsewhere).
COPY_COLUMNS = ("device_id", "deployment_id", "reported_at", "received_at", *KPI_FIELDS)


def _sample_row(device_id: int, sample: dict[str, Any]) -> tuple[Any, ...] | None:
    """A stored sample as a COPY row (COPY_COLUMNS order, received_at left to the caller), or None without a KPI."""
    kpis = tuple(sample.get(key) for key in KPI_FIELDS)
    if kpis.count(None) == len(kpis):
        return None  # nothing the gates or KPIs use
    # reported_at stays the ISO text stored at accept time: PostgreSQL parses it (a corrupt one fails the COPY).
    return (device_id, sample.get("deployment_id"), sample["reported_at"], *kpis)


def _copy_samples(rows: list[tuple[Any, ...]], received_at: datetime) -> None:
    """Write sample rows with one COPY (psycopg 3) inside the caller's transaction."""
    table = TelemetrySample._meta.db_table
    received = received_at.isoformat()
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy,
    ):
        for device_id, deployment_id, reported_at, *kpis in rows:
            copy.write_row((device_id, deployment_id, reported_at, received, *kpis))


@transaction.atomic
def telemetry_batch_process(*, batch_pk: int, now: datetime | None = None) -> int | None:
    """Fold an accepted batch into TelemetrySample rows exactly once; empty and repeated samples are dropped.

    Returns the number of samples stored, or None when the batch is gone or was processed already (a redelivered
    task message does nothing). Exactly once: the batch's row lock is held from the check to the commit, and the
    COPY and the processed mark commit together, so a redelivered or requeued copy of the task waits for the lock
    and then finds the batch processed (or, if the worker died, finds nothing written and does it all). The raw
    batch is cleared afterwards; its id stays as the idempotency record.
    """
    batch = (
        TelemetryBatch.objects.select_for_update()
        .filter(pk=batch_pk)
        .only("pk", "device_id", "samples", "processed_at")
        .first()
    )
    if batch is None or batch.processed_at is not None:
        return None
    now = now or timezone.now()
    rows: list[tuple[Any, ...]] = []
    seen: set[tuple[Any, ...]] = set()
    for sample in batch.samples or []:
        row = _sample_row(batch.device_id, sample)
        if row is not None and row not in seen:
            seen.add(row)
            rows.append(row)
    if rows:
        _copy_samples(rows, now)
    TelemetryBatch.objects.filter(pk=batch.pk).update(samples=None, processed_at=now, stored_count=len(rows))
    return len(rows)


def _requeue_delay(requeues: int) -> timedelta:
    return timedelta(seconds=min(STALE_BATCH_SECONDS * 2 ** (requeues + 1), MAX_STALE_BATCH_SECONDS))


def telemetry_requeue_stale(*, now: datetime | None = None) -> int:
    """Enqueue again the batches that are really stale: unprocessed, past their requeue time, and not locked by a
    worker processing them right now (a worker holds the batch's row lock until it commits)."""
    now = now or timezone.now()
    due = Q(requeue_after__lt=now) | Q(
        requeue_after__isnull=True, received_at__lt=now - timedelta(seconds=STALE_BATCH_SECONDS)
    )
    with transaction.atomic():
        stale = list(
            TelemetryBatch.objects.select_for_update(skip_locked=True)
            .filter(due, processed_at__isnull=True)
            .order_by("received_at")
            .only("pk", "requeue_count")[:REQUEUE_LIMIT]
        )
        for batch in stale:
            TelemetryBatch.objects.filter(pk=batch.pk).update(
                requeue_after=now + _requeue_delay(batch.requeue_count), requeue_count=F("requeue_count") + 1
            )
    # Sent after the block, once the row locks are released (the task locks the batch itself).
    for batch in stale:
        _enqueue(batch.pk)
    if stale:
        logger.warning("telemetry: %s stale batches enqueued again", len(stale))
    return len(stale)


def _delete_in_chunks(queryset: QuerySet[Any], deadline: float) -> int:
    deleted = 0
    while time.monotonic() < deadline:
        pks = list(queryset.values_list("pk", flat=True)[:PURGE_CHUNK])
        if not pks:
            break
        count, _ = queryset.model.objects.filter(pk__in=pks).delete()
        deleted += count
        if len(pks) < PURGE_CHUNK:
            break
    return deleted


@transaction.atomic
def telemetry_purge(*, now: datetime | None = None) -> dict[str, int]:
    """Delete samples past OTA_TELEMETRY_RETENTION_DAYS and processed batch ids past OTA_TELEMETRY_BATCH_KEEP_DAYS
    (in chunks, for at most PURGE_BUDGET_SECONDS per run; beat runs it hourly)."""
    now = now or timezone.now()
    retention = int(getattr(settings, "OTA_TELEMETRY_RETENTION_DAYS", DEFAULT_RETENTION_DAYS))
    keep = int(getattr(settings, "OTA_TELEMETRY_BATCH_KEEP_DAYS", DEFAULT_BATCH_KEEP_DAYS))
    deadline = time.monotonic() + PURGE_BUDGET_SECONDS
    samples = _delete_in_chunks(
        TelemetrySample.objects.filter(received_at__lt=now - timedelta(days=retention)), deadline
    )
    batches = _delete_in_chunks(
        TelemetryBatch.objects.filter(processed_at__isnull=False, received_at__lt=now - timedelta(days=keep)), deadline
    )
    if samples or batches:
        logger.info("telemetry purge: %s samples, %s batch ids deleted", samples, batches)
    return {"samples": samples, "batches": batches}
