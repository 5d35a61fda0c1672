"""Telemetry intake: a device's KPI batch is accepted once (idempotent on its batch id), then folded into samples
by a Celery task. Only what the health gates and KPIs need is kept (data minimisation: no positions, no raw batches
once processed, samples older than the retention period deleted)."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.db.models import F, Q, QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from devices.models import Device, TelemetryBatch, TelemetrySample
from devices.telemetry_aggregates import telemetry_aggregates_fold
from ota_project.compiled_queries import prepared_cursor
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
# A task folds its own batch with up to this many others in all (the oldest waiting, none another worker holds): under
# load one claim, one COPY, one fold and one commit serve many batches; bounded so one transaction stays short.
DEFAULT_FOLD_BATCHES = 20
# The purge deletes in chunks within a time budget, well inside the Celery time limit; the rest waits an hour.
PURGE_CHUNK = 5000
PURGE_BUDGET_SECONDS = 10.0


@dataclass(frozen=True)
class BatchAcceptance:
    """The outcome of accepting a batch: the batch record and whether it had been accepted before."""

    batch: TelemetryBatch
    duplicate: bool


_SAMPLE_FIELD_SET = frozenset(SAMPLE_FIELDS)
# The columns of a batch's COPY text, in this order: the device and the time the batch was received, the sample, then
# its attribution (the release it measures and its cohort: devices.telemetry_aggregates). Batches accepted before the
# attribution have the shorter column list; they are copied as they are and count in no aggregate.
UNATTRIBUTED_COPY_COLUMNS = ("device_id", "received_at", "deployment_id", "reported_at", *KPI_FIELDS)
COPY_COLUMNS = (*UNATTRIBUTED_COPY_COLUMNS, "release_version", "cohort")
COPY_NULL = "\\N"


@dataclass(frozen=True)
class SampleAttribution:
    """What a sample naming a deployment measures: that deployment's release, and the cohort (wave) it belongs to."""

    release_version: str
    cohort: str = ""


def _copy_text(value: str) -> str:
    """A text value for COPY's text format (backslash, tab and line breaks escaped)."""
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


_BOOL_TEXT = {True: "t", False: "f", None: COPY_NULL}


def _column_text(values: list[Any], *, boolean: bool) -> list[str]:
    """One column of COPY text; only integers (or booleans) and nulls, so nothing needs escaping."""
    kinds = set(map(type, values))
    nulls = type(None) in kinds
    if kinds - {bool if boolean else int, type(None)}:
        # Validated upstream; never let other text into the COPY stream.
        raise InvalidInput("Telemetry values are integers or booleans.", fields={"samples": ["Not a number."]})
    if boolean:
        return list(map(_BOOL_TEXT.__getitem__, values))
    if not nulls:
        return list(map(int.__str__, values))
    return [COPY_NULL if value is None else str(value) for value in values]


def _samples_text(samples: list[dict[str, Any]]) -> list[tuple[str, bool]]:
    """Validated samples as COPY text (deployment_id, reported_at and the KPIs, tab-separated), each with whether it
    carries a KPI; formatted column by column (a field no sample has is a column of nulls)."""
    fields = set().union(*samples)
    if not _SAMPLE_FIELD_SET.issuperset(fields):
        unknown = fields - _SAMPLE_FIELD_SET
        raise InvalidInput("A telemetry sample has unknown fields.", fields={"samples": sorted(unknown)[:20]})
    times: list[Any] = [sample.get("reported_at") for sample in samples]
    if not all(isinstance(at, datetime) and at.utcoffset() is not None for at in times):
        raise InvalidInput("Every sample needs a timezone-aware reported_at.", fields={"samples": ["reported_at"]})
    nulls = [COPY_NULL] * len(samples)

    def column(key: str, *, boolean: bool = False) -> list[str]:
        if key not in fields:
            return nulls
        return _column_text([sample.get(key) for sample in samples], boolean=boolean)

    kpis = [column(key, boolean=key == "sensor_calibrated") for key in KPI_FIELDS]
    texts = list(map("\t".join, zip(column("deployment_id"), map(datetime.isoformat, times), *kpis, strict=True)))
    if any(COPY_NULL not in values for values in kpis):  # a KPI every sample carries
        return [(text, True) for text in texts]
    empty = (COPY_NULL,) * len(KPI_FIELDS)
    return [(text, row != empty) for text, row in zip(texts, zip(*kpis, strict=True), strict=True)]


def content_batch_id(sample_texts: list[str]) -> str:
    """The batch id of a batch sent without one: the sha256 of its samples (normalised, in order), so a re-send is
    recognised too."""
    return "sha256:" + hashlib.sha256("\n".join(sample_texts).encode()).hexdigest()


def _enqueue(batch_pk: int) -> None:
    from devices.tasks import telemetry_batch_process_task  # the task module imports this one

    telemetry_batch_process_task.delay(batch_pk)


def _attribution_text(
    samples: list[dict[str, Any]], device: Device, deployments: Mapping[int, SampleAttribution]
) -> list[str]:
    """Each sample's attribution as COPY text: its deployment's release and cohort, else the installed version."""
    installed = _copy_text(device.installed_version) + "\t"
    named = {pk: _copy_text(one.release_version) + "\t" + _copy_text(one.cohort) for pk, one in deployments.items()}
    return [
        named.get(deployment_id, installed) if (deployment_id := sample.get("deployment_id")) else installed
        for sample in samples
    ]


def _insert_sql() -> str:
    table = TelemetryBatch._meta.db_table
    return f"""
INSERT INTO {table} (device_id, batch_id, received_at, sample_count, rows, requeue_after, requeue_count)
VALUES (%(device)s, %(batch_id)s, %(received_at)s, %(sample_count)s, %(rows)s, %(requeue_after)s, 0)
ON CONFLICT (device_id, batch_id) DO NOTHING
RETURNING id
"""


_INSERT_SQL = _insert_sql()


def telemetry_batch_accept(
    *,
    device: Device,
    samples: list[dict[str, Any]],
    batch_id: str | None = None,
    now: datetime | None = None,
    deployments: Mapping[int, SampleAttribution] | None = None,
) -> BatchAcceptance:
    """Accept a device's KPI batch once per (device, batch id) and hand it to the Celery task after commit.

    A batch re-sent after a dropped response (same batch id, or same samples when the device sends no id) is
    recognised and not counted twice. Deployment ids are checked by the caller (the device API), since the
    inventory app does not know deployments. The batch is stored as the COPY text of its samples (empty and
    repeated samples dropped here), so the task has nothing left to convert.

    Its one write is one prepared INSERT ... ON CONFLICT DO NOTHING: a transaction of its own from the device API
    (no BEGIN and COMMIT round trips), a statement in a caller's transaction, which a duplicate never spoils.
    """
    if not samples or len(samples) > MAX_BATCH_SAMPLES:
        raise InvalidInput("A batch has 1 to 500 samples.", fields={"samples": ["1 to 500 samples."]})
    texts = _samples_text(samples)
    batch_id = batch_id or content_batch_id([text for text, _ in texts])
    received_at = now or timezone.now()
    prefix = f"{device.pk}\t{received_at.isoformat()}\t"
    attributions = _attribution_text(samples, device, deployments or {})
    # dict.fromkeys: the samples that carry a KPI, each once, in the order sent (a repeat of a sample names the same
    # deployment, so it has the same attribution).
    kept = dict.fromkeys(
        (text, attribution) for (text, has_kpi), attribution in zip(texts, attributions, strict=True) if has_kpi
    )
    rows = "".join(f"{prefix}{text}\t{attribution}\n" for text, attribution in kept)
    requeue_after = received_at + timedelta(seconds=STALE_BATCH_SECONDS)
    with prepared_cursor() as cursor:
        cursor.execute(
            _INSERT_SQL,
            {
                "device": device.pk,
                "batch_id": batch_id,
                "received_at": received_at,
                "sample_count": len(texts),
                "rows": rows,
                "requeue_after": requeue_after,
            },
        )
        inserted = cursor.fetchone()
    if inserted is None:
        batch = TelemetryBatch.objects.get(device=device, batch_id=batch_id)
        duplicate = True
    else:
        batch = TelemetryBatch(
            pk=inserted[0],
            device=device,
            batch_id=batch_id,
            received_at=received_at,
            sample_count=len(texts),
            rows=rows,
            requeue_after=requeue_after,
        )
        batch._state.adding, batch._state.db = False, connection.alias  # as loaded: the row exists
        duplicate = False
    if batch.processed_at is None:
        # After commit, so the worker finds the row; a re-sent batch whose task was lost is enqueued again (the
        # task is idempotent). robust: a broker outage must not fail the device's request; the batch waits.
        pk = batch.pk
        transaction.on_commit(lambda: _enqueue(pk), robust=True)
    return BatchAcceptance(batch=batch, duplicate=duplicate)


def _legacy_rows(*, device_id: int, received_at: datetime, samples: list[dict[str, Any]]) -> str:
    """The COPY text of a batch stored as JSON samples (accepted before the COPY intake), empty and repeated ones
    dropped as they always were."""
    parsed = []
    for sample in samples:
        reported_at = parse_datetime(sample["reported_at"])
        if reported_at is None:  # checked when the batch was accepted: a stored batch with a bad time is corrupt
            raise ValueError(f"unreadable reported_at {sample['reported_at']!r} in a stored telemetry batch")
        parsed.append({**sample, "reported_at": reported_at})
    texts = [text for text, has_kpi in _samples_text(parsed) if has_kpi] if parsed else []
    prefix = f"{device_id}\t{received_at.isoformat()}\t"
    return "".join(prefix + text + "\n" for text in dict.fromkeys(texts))


def _copy_samples(rows: str) -> None:
    """Hand a batch's COPY text to PostgreSQL in one COPY, inside the caller's transaction."""
    table = TelemetrySample._meta.db_table
    first = rows[: rows.index("\n")]
    columns = COPY_COLUMNS if first.count("\t") == len(COPY_COLUMNS) - 1 else UNATTRIBUTED_COPY_COLUMNS
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
    ):
        copy.write(rows)


def _claim_sql() -> str:
    table = TelemetryBatch._meta.db_table
    # Its own batch and the oldest other unprocessed ones, each only if no one holds it (SKIP LOCKED: never a wait, so
    # two workers never queue behind each other's folds nor deadlock); the others only when the own batch is claimed.
    # The stored samples are one line each in `rows`: their count is its line breaks. The commit need not wait for
    # its WAL flush: if the server crashes before the flush, the whole transaction (samples, aggregates and
    # processed marks) is gone together, the batch rows (committed durably when they were accepted) are still
    # unprocessed, and the stale requeue folds them again. Atomicity is kept; only the wait on the disk is saved.
    return f"""
WITH own AS (
    SELECT id, rows, samples FROM {table} WHERE id = %(batch)s AND processed_at IS NULL FOR UPDATE SKIP LOCKED
), others AS (
    SELECT id, rows, samples FROM {table}
    WHERE processed_at IS NULL AND id <> %(batch)s AND EXISTS (SELECT 1 FROM own)
    ORDER BY processed_at, received_at LIMIT %(others)s FOR UPDATE SKIP LOCKED
), batch AS (
    SELECT * FROM own UNION ALL SELECT * FROM others
)
UPDATE {table} AS b
SET rows = '', samples = NULL, processed_at = %(now)s,
    stored_count = length(batch.rows) - length(replace(batch.rows, E'\\n', ''))
FROM batch WHERE b.id = batch.id
RETURNING b.id, b.device_id, b.received_at, batch.rows, batch.samples::text, b.stored_count,
    set_config('synchronous_commit', 'off', true)
"""


_CLAIM_SQL = _claim_sql()


def _fold_limit() -> int:
    return max(1, int(getattr(settings, "OTA_TELEMETRY_FOLD_BATCHES", DEFAULT_FOLD_BATCHES)))


def telemetry_batch_process(*, batch_pk: int, now: datetime | None = None) -> int | None:
    """Fold an accepted batch into TelemetrySample rows exactly once, with the oldest other batches waiting (at most
    OTA_TELEMETRY_FOLD_BATCHES in all) folded in the same transaction.

    Returns the number of samples of this batch stored, or None when the batch is gone, was processed already, or is
    being folded by another task right now (a redelivered task message, or the message of a batch another task
    folds, does nothing and never waits). Exactly once: one statement locks the batches' rows, reads their samples
    and marks them processed (clearing the raw batches; their ids stay as the idempotency records), and the COPY,
    the aggregates and those marks commit together. If the worker holding a batch dies, its transaction rolls back
    and the batch is unprocessed and unlocked again: the dead task's message is redelivered (and folds its batch and
    the oldest waiting, oldest first), the next task's claim takes it among the others, and the stale requeue sends
    it again if neither comes. Three statements whatever the number of batches: the claim, the COPY, the fold; under
    load a task folds a backlog at the cost of one.

    A batch that cannot be stored (a corrupt legacy batch) fails only its own task: a fold of several that fails on
    its data is done again with the own batch alone.
    """
    limit = _fold_limit()
    try:
        return _process(batch_pk=batch_pk, now=now, others=limit - 1)
    except (ValueError, DataError, IntegrityError):
        if limit == 1:
            raise
        logger.warning("telemetry: a fold of several batches failed on its data; batch %s alone", batch_pk)
        return _process(batch_pk=batch_pk, now=now, others=0)


@transaction.atomic
def _process(*, batch_pk: int, now: datetime | None, others: int) -> int | None:
    with prepared_cursor() as cursor:
        cursor.execute(_CLAIM_SQL, {"batch": batch_pk, "now": now or timezone.now(), "others": others})
        # In the order accepted (batch id): the samples are stored, and so numbered for the baselines, in that order.
        claimed = sorted(cursor.fetchall())
    if not claimed:
        return None
    texts: dict[bool, list[str]] = {True: [], False: []}  # attributed or not: the COPY's column list
    keys: list[tuple[int, datetime]] = []
    own = 0
    for pk, device_id, received_at, rows, samples_json, stored, _ in claimed:
        samples = json.loads(samples_json) if samples_json is not None else None  # a JSON null reads as Django did
        if samples is not None:
            rows = _legacy_rows(device_id=device_id, received_at=received_at, samples=samples)
            stored = rows.count("\n")
            TelemetryBatch.objects.filter(pk=pk).update(stored_count=stored)
        if pk == batch_pk:
            own = int(stored)
        if rows:
            first = rows[: rows.index("\n")]
            texts[first.count("\t") == len(COPY_COLUMNS) - 1].append(rows)
            keys.append((device_id, received_at))
    for attributed in (True, False):
        if texts[attributed]:
            _copy_samples("".join(texts[attributed]))
    if keys:
        # Same transaction as the samples: the aggregates hold exactly the samples stored, once.
        telemetry_aggregates_fold(keys)
    return own


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
