"""Signed exports of the decision record (ZIP bundles); approvals.audit.verify checks them offline.

A bundle holds:
  records.jsonl | records.csv   every field of each record's hashed payload, plus its `hash`; `step_key` is hashed
                                only when it is not null (a CSV has the column on every row, null where absent)
  manifest.json                 what was exported, by whom, when, the records file's sha256, the chain verdict
  manifest.sig                  base64 Ed25519 signature over the exact bytes of manifest.json
  audit_public_key.pem          the server audit public key (pin it: compare its key id with a trusted copy)
  checkpoints.jsonl             the server's signed checkpoint log up to the exported head (bundle_version 2);
                                the manifest binds its sha256 and carries the public keys of retired audit keys

Anyone holding a bundle can check it without the server: the signature binds the manifest, the manifest's
sha256 binds the records file, and each row's hash is recomputed from its fields, so no row can be altered,
dropped, inserted or reordered unnoticed; every checkpoint's signature is checked and every exported record
at a checkpoint's seq must carry the hash that checkpoint signed (a full export must reach the latest one).
With `openssl` alone:
  base64 -d manifest.sig > manifest.sig.bin
  openssl pkeyutl -verify -pubin -inkey audit_public_key.pem -rawin -in manifest.json -sigfile manifest.sig.bin
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import itertools
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any

from django.contrib.auth.models import AbstractBaseUser, User
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from approvals.audit.checkpoints import checkpoint_after_verify, checkpoint_log_lines
from approvals.audit.keys import (
    AUDIT_SIGNATURE_ALGORITHM,
    audit_key_id,
    audit_public_key_pem,
    audit_retired_public_keys,
    audit_sign,
)
from approvals.audit.models import DecisionRecord
from approvals.audit.records import (
    GENESIS_HASH,
    canonical_json,
    iter_records,
    record_decision,
    record_payload,
)
from ota_project.errors import InvalidInput

BUNDLE_VERSION = 2
# Version 1 bundles (no checkpoints) from earlier servers still verify, without the checkpoint checks.
READABLE_BUNDLE_VERSIONS = (1, 2)
EXPORT_FORMATS = ("jsonl", "csv")
RECORDS_FILE = {"jsonl": "records.jsonl", "csv": "records.csv"}
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
PUBLIC_KEY_FILE = "audit_public_key.pem"
CHECKPOINTS_FILE = "checkpoints.jsonl"
EXPORT_ACTION = "audit.export"
EXPORT_OBJECT_TYPE = "audit_bundle"
EXPORT_BATCH_SIZE = 2000
MAX_SEQ = 2**63 - 1

# Columns that a CSV bundle writes as plain text; every other column holds the canonical JSON of its value
# (numbers, null, before/after), so that each cell decodes back to exactly the value that was hashed.
# Cells are not escaped against spreadsheet formula injection: they must round-trip byte for byte to the
# hashed values. Auditors should import the CSV as text, not open it by double-click.
CSV_TEXT_FIELDS = ("created_at", "actor", "action", "object_type", "object_id", "reason", "prev_hash", "hash")
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


def _utc_timestamp(value: datetime) -> str:
    """The same UTC form as the hashed `created_at` (microseconds, Z)."""
    return value.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


@dataclass(frozen=True)
class ExportFilter:
    """Which part of the chain an export covers: a seq range and/or a created_at range [since, until)."""

    from_seq: int | None = None
    to_seq: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    @property
    def is_full_chain(self) -> bool:
        return self.from_seq is None and self.to_seq is None and self.since is None and self.until is None

    @property
    def has_date_range(self) -> bool:
        return self.since is not None or self.until is not None

    def validate(self) -> None:
        """Refuse ranges that cannot match anything sensible (InvalidInput, HTTP 400)."""
        fields: dict[str, list[str]] = {}
        for name in ("from_seq", "to_seq"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not 1 <= value <= MAX_SEQ):
                fields[name] = [f"Must be a whole number from 1 to {MAX_SEQ}."]
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and timezone.is_naive(value):
                fields[name] = ["Must carry a time zone."]
        if not fields and self.from_seq is not None and self.to_seq is not None and self.from_seq > self.to_seq:
            fields["to_seq"] = ["Must not be smaller than from_seq."]
        if not fields and self.since is not None and self.until is not None and self.since >= self.until:
            fields["until"] = ["Must be later than since."]
        if fields:
            raise InvalidInput("The export range is not valid.", fields=fields)

    def as_manifest(self) -> dict[str, Any]:
        return {
            "from_seq": self.from_seq,
            "to_seq": self.to_seq,
            "since": _utc_timestamp(self.since) if self.since else None,
            "until": _utc_timestamp(self.until) if self.until else None,
        }


@dataclass(frozen=True)
class ExportResult:
    """What an export produced: the signed manifest and the `audit.export` record appended for it."""

    manifest: dict[str, Any]
    manifest_sha256: str
    record: DecisionRecord
    filename: str


def _export_rows(export_filter: ExportFilter, head_seq: int) -> Iterator[dict[str, Any]]:
    """Hashed payload plus hash of each exported record, in chain order, streamed in batches."""
    if export_filter.is_full_chain:
        records: Iterator[DecisionRecord] = iter_records(batch_size=EXPORT_BATCH_SIZE)
    else:
        queryset = DecisionRecord.objects.filter(seq__lte=head_seq)
        if export_filter.from_seq is not None:
            queryset = queryset.filter(seq__gte=export_filter.from_seq)
        if export_filter.to_seq is not None:
            queryset = queryset.filter(seq__lte=export_filter.to_seq)
        if export_filter.since is not None:
            queryset = queryset.filter(created_at__gte=export_filter.since)
        if export_filter.until is not None:
            queryset = queryset.filter(created_at__lt=export_filter.until)
        records = queryset.order_by("seq").iterator(chunk_size=EXPORT_BATCH_SIZE)
    for record in records:
        # Records appended while the export runs belong to the next export: stop at the head seen at the start.
        if record.seq > head_seq:
            break
        yield {**record_payload(record), "hash": record.hash}


def _csv_cell(name: str, value: Any) -> str:
    if name in CSV_TEXT_FIELDS:
        if not isinstance(value, str):
            raise TypeError(f"CSV text field {name} holds {type(value).__name__}, not str")
        return value
    return canonical_json(value)


def _zip_info(name: str, created_at: datetime) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time=created_at.timetuple()[:6])
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    return info


def _write_records(archive: zipfile.ZipFile, fmt: str, rows: Iterator[dict[str, Any]], created_at: datetime) -> dict:
    """Stream rows into the records member; return its sha256, size, count, first/last seq and head hash."""
    digest = hashlib.sha256()
    summary: dict[str, Any] = {"record_count": 0, "first_seq": None, "last_seq": None, "head_hash": None}
    size = 0
    fields: list[str] | None = None
    text_buffer = io.StringIO()
    csv_writer = csv.writer(text_buffer, lineterminator="\r\n")
    with archive.open(_zip_info(RECORDS_FILE[fmt], created_at), "w", force_zip64=True) as member:

        def emit(text: str) -> None:
            nonlocal size
            data = text.encode("utf-8")
            digest.update(data)
            size += len(data)
            member.write(data)

        for row in rows:
            if fmt == "jsonl":
                emit(canonical_json(row) + "\n")
            else:
                # Every CSV row has the same columns: a record without a step key shows null (not hashed).
                payload = {name: value for name, value in row.items() if name not in ("step_key", "hash")}
                row = {**payload, "step_key": row.get("step_key"), "hash": row["hash"]}
                if fields is None:
                    fields = list(row)
                    csv_writer.writerow(fields)
                if list(row) != fields:
                    raise RuntimeError("record payloads changed shape during the export")
                csv_writer.writerow([_csv_cell(name, row[name]) for name in fields])
                emit(text_buffer.getvalue())
                text_buffer.seek(0)
                text_buffer.truncate()
            summary["record_count"] += 1
            summary["first_seq"] = summary["first_seq"] or row["seq"]
            summary["last_seq"] = row["seq"]
            summary["head_hash"] = row["hash"]
    summary["records_sha256"] = digest.hexdigest()
    summary["records_bytes"] = size
    return summary


def _checkpoint_seq(line: str) -> int:
    """The seq a checkpoint log line names (0 if it names none: such lines are kept in the bundle as they are)."""
    try:
        seq = json.loads(line).get("seq")
    except (ValueError, AttributeError):
        return 0
    return seq if isinstance(seq, int) else 0


def _actor_name(actor: AbstractBaseUser | None, system_actor: str) -> str:
    if actor is not None and actor.is_authenticated:
        return actor.get_username()
    return f"system:{system_actor}"


def bundle_span(manifest: dict[str, Any]) -> str:
    """Human summary of what a bundle covers, e.g. "#1..#42, full chain" or "no records, filter {...}"."""
    rows = f"#{manifest['first_seq']}..#{manifest['last_seq']}" if manifest.get("record_count") else "no records"
    return f"{rows}, full chain" if manifest.get("full_chain") else f"{rows}, filter {manifest.get('filter')}"


def audit_export_write(
    out: IO[bytes],
    *,
    actor: User | None,
    fmt: str,
    from_seq: int | None = None,
    to_seq: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    reason: str = "",
    system_actor: str = "audit_export",
) -> ExportResult:
    """Write a signed export bundle of the decision record to `out` and record the export in the chain."""
    if fmt not in EXPORT_FORMATS:
        raise InvalidInput(
            "Unknown export format.", fields={"format": [f"Choose one of: {', '.join(EXPORT_FORMATS)}."]}
        )
    export_filter = ExportFilter(from_seq=from_seq, to_seq=to_seq, since=since, until=until)
    export_filter.validate()
    created_at = timezone.now()
    exported_by = _actor_name(actor, system_actor)

    # Verifying also signs a checkpoint of the head when the chain is intact (one per export, at most).
    verdict, _ = checkpoint_after_verify()
    checkpoint_lines = checkpoint_log_lines()
    if verdict.ok:
        # The verified head bounds the export, so rows, counts and head hash describe one prefix of the chain even
        # while decisions keep being appended (appends serialise on a lock, so committed seqs have no holes). The
        # log's seqs only grow: the lines up to that head are a prefix, whose numbering and links stay whole.
        head_seq = verdict.length
        checkpoint_lines = list(itertools.takewhile(lambda line: _checkpoint_seq(line) <= head_seq, checkpoint_lines))
    else:
        # A damaged chain is exported as it stands, with every checkpoint: they are the evidence of what is missing.
        head_seq = DecisionRecord.objects.aggregate(head=Max("seq"))["head"] or 0
    checkpoints_bytes = "".join(checkpoint_lines).encode("utf-8")
    public_pem = audit_public_key_pem()
    key_id = audit_key_id()

    with zipfile.ZipFile(out, "w") as archive:
        summary = _write_records(archive, fmt, _export_rows(export_filter, head_seq), created_at)
        manifest: dict[str, Any] = {
            "bundle_version": BUNDLE_VERSION,
            "format": fmt,
            "records_file": RECORDS_FILE[fmt],
            "records_sha256": summary["records_sha256"],
            "records_bytes": summary["records_bytes"],
            "record_count": summary["record_count"],
            "first_seq": summary["first_seq"],
            "last_seq": summary["last_seq"],
            "head_hash": summary["head_hash"],
            "full_chain": export_filter.is_full_chain,
            "filter": export_filter.as_manifest(),
            "genesis_hash": GENESIS_HASH,
            "chain_at_export": {
                "ok": verdict.ok,
                "length": verdict.length,
                "broken_seq": verdict.broken_seq,
                "problem": verdict.problem,
                "head_hash": verdict.head_hash,
            },
            "created_at": _utc_timestamp(created_at),
            "exported_by": exported_by,
            "key_id": key_id,
            "algorithm": AUDIT_SIGNATURE_ALGORITHM,
        }
        if fmt == "csv":
            manifest["csv_text_fields"] = list(CSV_TEXT_FIELDS)
        manifest["checkpoints_file"] = CHECKPOINTS_FILE
        manifest["checkpoints_sha256"] = hashlib.sha256(checkpoints_bytes).hexdigest()
        manifest["checkpoint_count"] = len(checkpoint_lines)
        manifest["checkpoint_keys"] = audit_retired_public_keys()
        manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
        archive.writestr(_zip_info(MANIFEST_FILE, created_at), manifest_bytes)
        archive.writestr(_zip_info(SIGNATURE_FILE, created_at), base64.b64encode(audit_sign(manifest_bytes)) + b"\n")
        archive.writestr(_zip_info(PUBLIC_KEY_FILE, created_at), public_pem.encode())
        archive.writestr(_zip_info(CHECKPOINTS_FILE, created_at), checkpoints_bytes)
    manifest_sha256 = hashlib.sha256(manifest_bytes).hexdigest()

    # The export is recorded AFTER the bundle is complete, for two reasons: the record can then name the exact
    # bundle (its object_id is the manifest's sha256, its `after` the range and head hash), which is impossible
    # before the manifest exists; and an export that fails half-way leaves no record claiming data left the
    # system. The price is that a bundle never contains its own export record; the next export does.
    with transaction.atomic():
        record = record_decision(
            actor=actor,
            action=EXPORT_ACTION,
            object_type=EXPORT_OBJECT_TYPE,
            object_id=manifest_sha256,
            after={
                "format": fmt,
                "filter": manifest["filter"],
                "full_chain": manifest["full_chain"],
                "record_count": manifest["record_count"],
                "first_seq": manifest["first_seq"],
                "last_seq": manifest["last_seq"],
                "head_hash": manifest["head_hash"],
                "records_sha256": manifest["records_sha256"],
                "key_id": key_id,
            },
            reason=reason,
            system_actor=system_actor,
        )
    span = f"{manifest['first_seq']}-{manifest['last_seq']}" if manifest["record_count"] else "empty"
    filename = f"decision-record-{span}-{created_at.astimezone(UTC):%Y%m%dT%H%M%SZ}.zip"
    return ExportResult(manifest=manifest, manifest_sha256=manifest_sha256, record=record, filename=filename)


def audit_export(
    *,
    actor: User | None = None,
    fmt: str,
    from_seq: int | None = None,
    to_seq: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    reason: str = "",
) -> bytes:
    """A signed export bundle (ZIP bytes) of the decision record, or of a seq/date range of it; records the export."""
    buffer = io.BytesIO()
    audit_export_write(
        buffer, actor=actor, fmt=fmt, from_seq=from_seq, to_seq=to_seq, since=since, until=until, reason=reason
    )
    return buffer.getvalue()
