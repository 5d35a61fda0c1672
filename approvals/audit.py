"""Signed exports of the decision record (ZIP bundles) and their offline verification.

A bundle holds:
  records.jsonl | records.csv   every field of each record's hashed payload, plus its `hash`
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
import binascii
import csv
import hashlib
import io
import itertools
import json
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from django.contrib.auth.models import User
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from approvals.audit_checkpoints import checkpoint_after_verify, checkpoint_log_lines, checkpoint_log_parse
from approvals.audit_keys import (
    AUDIT_SIGNATURE_ALGORITHM,
    audit_key_id,
    audit_public_key_pem,
    audit_retired_public_keys,
    audit_sign,
    audit_verify_signature,
    load_audit_public_key,
    public_key_id,
)
from approvals.models import DecisionRecord
from approvals.records import (
    GENESIS_HASH,
    Checkpoint,
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
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_MAX_SMALL_MEMBER_BYTES = 1024 * 1024
_CSV_FIELD_LIMIT = 256 * 1024 * 1024
# What reading a damaged or hostile ZIP can raise (encrypted members raise RuntimeError, unknown
# compression methods NotImplementedError); all of them mean "not a sound bundle", never a crash.
_ZIP_READ_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    NotImplementedError,
    RuntimeError,
    ValueError,
    OSError,
)


def _utc_timestamp(value: datetime) -> str:
    """The same UTC form as the hashed `created_at` (microseconds, Z)."""
    return value.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def _parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, _TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


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


def _actor_name(actor: User | None, system_actor: str) -> str:
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


# --- offline verification -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleVerdict:
    """Result of checking an export bundle: ok, or the problems found, the first bad row named."""

    ok: bool
    problems: tuple[str, ...] = ()
    record_count: int = 0
    first_bad_seq: int | None = None
    first_bad_line: int | None = None
    head_hash: str | None = None
    key_id: str = ""
    key_pinned: bool = False
    manifest: dict[str, Any] = field(default_factory=dict)

    @property
    def problem(self) -> str:
        return self.problems[0] if self.problems else ""


class _BundleError(Exception):
    """A problem that makes further checks of the bundle meaningless."""


def _read_small(archive: zipfile.ZipFile, name: str) -> bytes:
    info = archive.getinfo(name)
    if info.file_size > _MAX_SMALL_MEMBER_BYTES:
        raise _BundleError(f"{name} is larger than {_MAX_SMALL_MEMBER_BYTES} bytes")
    try:
        with archive.open(info) as member:
            data = member.read(_MAX_SMALL_MEMBER_BYTES + 1)
    except _ZIP_READ_ERRORS as exc:
        raise _BundleError(f"{name} is damaged inside the ZIP: {exc}") from exc
    if len(data) > _MAX_SMALL_MEMBER_BYTES:
        raise _BundleError(f"{name} is larger than {_MAX_SMALL_MEMBER_BYTES} bytes")
    return data


def _jsonl_rows(stream: IO[bytes]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    """(line number, row or a description of why the line is not a row)."""
    for line_no, line in enumerate(stream, start=1):
        try:
            text = line.decode("utf-8")
            row = json.loads(text)
            canonical = canonical_json(row) + "\n"
        except (ValueError, RecursionError) as exc:  # bad UTF-8 or JSON, NaN, absurd nesting
            yield line_no, f"not valid JSON ({exc})"
            continue
        if not isinstance(row, dict):
            yield line_no, "not a JSON object"
        elif canonical != text:
            yield line_no, "not in canonical JSON form"
        else:
            yield line_no, row


def _csv_rows(stream: IO[bytes], text_fields: frozenset[str]) -> Iterator[tuple[int, dict[str, Any] | str]]:
    # Raising the limit is process-wide but harmless; big before/after values must not stop a verification.
    csv.field_size_limit(max(csv.field_size_limit(), _CSV_FIELD_LIMIT))
    text = io.TextIOWrapper(stream, encoding="utf-8", newline="")
    reader = csv.reader(text, strict=True)
    header: list[str] | None = None
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except (csv.Error, UnicodeDecodeError) as exc:
            yield reader.line_num, f"not valid CSV ({exc})"
            return
        if header is None:
            header = cells
            if "seq" not in header or "hash" not in header or len(set(header)) != len(header):
                yield reader.line_num, "the header row must name each field once, including seq and hash"
                return
            continue
        if len(cells) != len(header):
            yield reader.line_num, f"has {len(cells)} cells, the header has {len(header)}"
            continue
        row: dict[str, Any] = {}
        try:
            for name, cell in zip(header, cells, strict=True):
                row[name] = cell if name in text_fields else json.loads(cell)
        except (ValueError, RecursionError) as exc:
            yield reader.line_num, f"cell {name!r} is not JSON ({exc})"
            continue
        yield reader.line_num, row


def _row_problem(row: dict[str, Any], previous: dict[str, Any] | None, manifest: dict[str, Any]) -> str:
    """Why this row breaks the bundle, or "" if it is sound (given the row before it)."""
    seq, own_hash, prev_hash = row.get("seq"), row.get("hash"), row.get("prev_hash")
    if isinstance(seq, bool) or not isinstance(seq, int):
        return "seq is not a whole number"
    if not isinstance(own_hash, str) or not isinstance(prev_hash, str):
        return "hash and prev_hash must be text"
    payload = {name: value for name, value in row.items() if name != "hash"}
    try:
        content = canonical_json(payload).encode()
    except (ValueError, RecursionError):
        return "holds a value canonical JSON cannot encode (NaN, Infinity or absurd nesting)"
    if hashlib.sha256(content).hexdigest() != own_hash:
        return "content does not match its hash (the record was altered)"
    filters = manifest.get("filter") or {}
    if previous is None:
        if manifest.get("full_chain") and seq != 1:
            return f"a full export must start at record #1, it starts at #{seq}"
    elif seq <= previous["seq"]:
        return f"out of order: #{seq} follows #{previous['seq']}"
    elif seq != previous["seq"] + 1 and not (filters.get("since") or filters.get("until")):
        return f"expected record #{previous['seq'] + 1}, found #{seq} (a record is missing)"
    if seq == 1 and prev_hash != GENESIS_HASH:
        return "record #1 does not link to the genesis hash"
    if previous is not None and seq == previous["seq"] + 1 and prev_hash != previous["hash"]:
        return "prev_hash does not match the hash of the record before it"
    if filters.get("from_seq") is not None and seq < filters["from_seq"]:
        return f"outside the exported range (from_seq {filters['from_seq']})"
    if filters.get("to_seq") is not None and seq > filters["to_seq"]:
        return f"outside the exported range (to_seq {filters['to_seq']})"
    if filters.get("since") or filters.get("until"):
        created_at = _parse_timestamp(row.get("created_at"))
        since, until = _parse_timestamp(filters.get("since")), _parse_timestamp(filters.get("until"))
        if created_at is None:
            return "created_at is not a UTC timestamp"
        if (since and created_at < since) or (until and created_at >= until):
            return "outside the exported date range"
    return ""


def _verify_bundle_checkpoints(
    archive: zipfile.ZipFile,
    manifest: dict[str, Any],
    verifying_pem: str | bytes,
    verifying_key_id: str,
    problems: list[str],
) -> tuple[Checkpoint, ...]:
    """Check the bundle's checkpoint log against the signed manifest and the keys it names; the valid ones."""
    if CHECKPOINTS_FILE not in archive.namelist():
        raise _BundleError(f"{CHECKPOINTS_FILE} is missing")
    keyring = {verifying_key_id: load_audit_public_key(verifying_pem)}
    retired = manifest.get("checkpoint_keys")
    if not isinstance(retired, dict):
        raise _BundleError(f"{MANIFEST_FILE} does not list the checkpoint keys")
    for key_id, pem in retired.items():
        try:
            if public_key_id(pem) != key_id:
                raise ValueError(f"its key id is {public_key_id(pem)}")
            keyring[key_id] = load_audit_public_key(pem)
        except (TypeError, ValueError) as exc:
            problems.append(f"checkpoint key {key_id} in {MANIFEST_FILE} is not usable ({exc})")
    try:
        data = _read_checkpoints(archive)
    except _ZIP_READ_ERRORS as exc:
        raise _BundleError(f"{CHECKPOINTS_FILE} is damaged inside the ZIP: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != manifest.get("checkpoints_sha256"):
        problems.append(f"{CHECKPOINTS_FILE} does not match the sha256 in the signed manifest (the file was altered)")
    try:
        lines = data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        problems.append(f"{CHECKPOINTS_FILE} is not UTF-8 text")
        return ()
    log = checkpoint_log_parse(lines, keyring)
    problems.extend(f"{CHECKPOINTS_FILE}: {problem}" for problem in log.problems)
    if log.line_count != manifest.get("checkpoint_count"):
        problems.append(
            f"the manifest says checkpoint_count {manifest.get('checkpoint_count')!r}, "
            f"{CHECKPOINTS_FILE} has {log.line_count}"
        )
    return log.checkpoints


def _read_checkpoints(archive: zipfile.ZipFile) -> bytes:
    with archive.open(CHECKPOINTS_FILE) as member:
        return member.read()


def _check_manifest_shape(manifest: Any) -> dict[str, Any]:
    if not isinstance(manifest, dict):
        raise _BundleError(f"{MANIFEST_FILE} is not a JSON object")
    if manifest.get("bundle_version") not in READABLE_BUNDLE_VERSIONS:
        raise _BundleError(f"unsupported bundle_version {manifest.get('bundle_version')!r}")
    if manifest.get("algorithm") != AUDIT_SIGNATURE_ALGORITHM:
        raise _BundleError(f"unsupported signature algorithm {manifest.get('algorithm')!r}")
    fmt = manifest.get("format")
    if fmt not in EXPORT_FORMATS or manifest.get("records_file") != RECORDS_FILE[fmt]:
        raise _BundleError(f"unknown format {fmt!r} or records file {manifest.get('records_file')!r}")
    if not isinstance(manifest.get("filter"), dict):
        raise _BundleError(f"{MANIFEST_FILE} does not say which filter was used")
    return manifest


def _verify_archive(archive: zipfile.ZipFile, trusted_public_key_pem: str | bytes | None) -> BundleVerdict:
    problems: list[str] = []
    names = archive.namelist()
    if len(names) != len(set(names)):
        raise _BundleError("the ZIP holds two members with the same name")
    for required in (MANIFEST_FILE, SIGNATURE_FILE, PUBLIC_KEY_FILE):
        if required not in names:
            raise _BundleError(f"{required} is missing")

    # 1. The signature over the exact manifest bytes, by the pinned key if one is given.
    manifest_bytes = _read_small(archive, MANIFEST_FILE)
    included_pem = _read_small(archive, PUBLIC_KEY_FILE)
    try:
        signature = base64.b64decode(_read_small(archive, SIGNATURE_FILE).strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _BundleError(f"{SIGNATURE_FILE} is not base64 ({exc})") from exc
    try:
        included_key_id = public_key_id(included_pem)
    except ValueError as exc:
        raise _BundleError(f"{PUBLIC_KEY_FILE} is not an Ed25519 public key ({exc})") from exc
    key_pinned = trusted_public_key_pem is not None
    if trusted_public_key_pem is not None:
        try:
            verifying_key_id = public_key_id(trusted_public_key_pem)
        except ValueError as exc:
            raise _BundleError(f"the pinned public key is not an Ed25519 public key ({exc})") from exc
        verifying_pem = trusted_public_key_pem
    else:
        verifying_key_id, verifying_pem = included_key_id, included_pem
    if not audit_verify_signature(verifying_pem, manifest_bytes, signature):
        if key_pinned and included_key_id != verifying_key_id:
            raise _BundleError(
                f"the bundle carries key {included_key_id}, not the pinned key {verifying_key_id}, "
                "and its signature does not verify with the pinned key"
            )
        raise _BundleError(
            f"{SIGNATURE_FILE} is not a valid signature of {MANIFEST_FILE} by key {verifying_key_id} "
            "(the manifest or its signature was altered)"
        )

    # 2. The manifest's own claims: shape, key id, member list.
    try:
        manifest = _check_manifest_shape(json.loads(manifest_bytes.decode("utf-8")))
    except (UnicodeDecodeError, ValueError) as exc:
        raise _BundleError(f"{MANIFEST_FILE} is not valid JSON ({exc})") from exc
    if manifest.get("key_id") != verifying_key_id:
        problems.append(f"the manifest names key {manifest.get('key_id')}, it was verified with {verifying_key_id}")
    if included_key_id != verifying_key_id:
        problems.append(f"{PUBLIC_KEY_FILE} (key {included_key_id}) is not the key that signed the manifest")
    records_file = manifest["records_file"]
    if records_file not in names:
        raise _BundleError(f"{records_file} is missing")
    expected = {MANIFEST_FILE, SIGNATURE_FILE, PUBLIC_KEY_FILE, records_file}
    checkpoints: tuple[Checkpoint, ...] = ()
    if manifest["bundle_version"] >= 2:
        expected.add(CHECKPOINTS_FILE)
        checkpoints = _verify_bundle_checkpoints(archive, manifest, verifying_pem, verifying_key_id, problems)
    anchors: dict[int, list[Checkpoint]] = {}
    for checkpoint in checkpoints:
        anchors.setdefault(checkpoint.seq, []).append(checkpoint)
    unexpected = sorted(set(names) - expected)
    if unexpected:
        problems.append(f"unexpected files in the bundle: {', '.join(unexpected)}")

    # 3. The records file: its sha256 against the manifest (first pass), then every row's hash and link
    # recomputed (second pass); two passes keep both simple and memory flat for long chains.
    digest = hashlib.sha256()
    size = 0
    count = 0
    first_seq = last_seq = head_hash = None
    bad_seq = bad_line = None
    row_problem = checkpoint_problem = ""
    previous: dict[str, Any] | None = None
    try:
        with archive.open(records_file) as member:
            while chunk := member.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
        with archive.open(records_file) as member:
            if manifest["format"] == "jsonl":
                rows = _jsonl_rows(member)
            else:
                rows = _csv_rows(member, frozenset(manifest.get("csv_text_fields") or CSV_TEXT_FIELDS))
            for line_no, row in rows:
                count += 1
                seq = row.get("seq") if isinstance(row, dict) else None
                seq = seq if isinstance(seq, int) and not isinstance(seq, bool) else None
                problem = row if isinstance(row, str) else _row_problem(row, previous, manifest)
                if problem and not row_problem:
                    row_problem, bad_seq, bad_line = problem, seq, line_no
                if isinstance(row, dict) and seq is not None:
                    for checkpoint in anchors.get(seq, ()):
                        if row.get("hash") != checkpoint.head_hash and not checkpoint_problem:
                            checkpoint_problem = (
                                f"record #{seq} does not match the signed checkpoint #{checkpoint.number} "
                                f"(signed at {checkpoint.signed_at}): the chain was rewritten"
                            )
                    previous = row
                    first_seq = seq if first_seq is None else first_seq
                    last_seq, head_hash = seq, row.get("hash")
    except _ZIP_READ_ERRORS as exc:
        raise _BundleError(f"{records_file} is damaged inside the ZIP: {exc}") from exc

    if digest.hexdigest() != manifest.get("records_sha256") or size != manifest.get("records_bytes"):
        problems.append(f"{records_file} does not match the sha256 in the signed manifest (the file was altered)")
    if row_problem:
        where = f"line {bad_line}" + (f" (record #{bad_seq})" if bad_seq is not None else "")
        problems.append(f"{records_file} {where}: {row_problem}")
    claims = {"record_count": count, "first_seq": first_seq, "last_seq": last_seq, "head_hash": head_hash}
    for name, actual in claims.items():
        if manifest.get(name) != actual:
            problems.append(f"the manifest says {name} {manifest.get(name)!r}, the records file has {actual!r}")
    if checkpoint_problem:
        problems.append(checkpoint_problem)
    latest = max(checkpoints, key=lambda c: (c.seq, c.number), default=None)
    if manifest.get("full_chain") and latest is not None and (last_seq or 0) < latest.seq:
        ends = f"ends at #{last_seq}" if last_seq else "holds no records"
        problems.append(
            f"the bundle {ends} but checkpoint #{latest.number} (signed at {latest.signed_at}) says the head was "
            f"#{latest.seq} with hash {latest.head_hash}: records were deleted"
        )
    chain = manifest.get("chain_at_export") or {}
    if chain.get("ok") is not True:
        problems.append(
            f"the server found the chain broken at export time: record #{chain.get('broken_seq')}: "
            f"{chain.get('problem')}"
        )
    return BundleVerdict(
        ok=not problems,
        problems=tuple(problems),
        record_count=count,
        first_bad_seq=bad_seq,
        first_bad_line=bad_line,
        head_hash=head_hash,
        key_id=verifying_key_id,
        key_pinned=key_pinned,
        manifest=manifest,
    )


def audit_bundle_verify(
    bundle: bytes | IO[bytes], *, trusted_public_key_pem: str | bytes | None = None
) -> BundleVerdict:
    """Check an export bundle offline: signature (by the pinned key if given), records sha256, every row's hash
    and link (from the genesis hash for a full export), naming the first bad row."""
    source = io.BytesIO(bundle) if isinstance(bundle, bytes | bytearray) else bundle
    try:
        with zipfile.ZipFile(source) as archive:
            return _verify_archive(archive, trusted_public_key_pem)
    except _BundleError as exc:
        return BundleVerdict(ok=False, problems=(str(exc),), key_pinned=trusted_public_key_pem is not None)
    except _ZIP_READ_ERRORS as exc:
        return BundleVerdict(
            ok=False, problems=(f"not a readable ZIP file ({exc})",), key_pinned=trusted_public_key_pem is not None
        )
