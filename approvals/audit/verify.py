"""Offline verification of signed decision-record export bundles (see approvals.audit.export for the format)."""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import io
import json
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from approvals.audit.checkpoints import checkpoint_log_parse
from approvals.audit.export import (
    CHECKPOINTS_FILE,
    CSV_TEXT_FIELDS,
    EXPORT_FORMATS,
    MANIFEST_FILE,
    PUBLIC_KEY_FILE,
    READABLE_BUNDLE_VERSIONS,
    RECORDS_FILE,
    SIGNATURE_FILE,
    TIMESTAMP_FORMAT,
)
from approvals.audit.keys import (
    AUDIT_SIGNATURE_ALGORITHM,
    audit_verify_signature,
    load_audit_public_key,
    public_key_id,
)
from approvals.audit.records import GENESIS_HASH, Checkpoint, canonical_json

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


def _parse_timestamp(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.strptime(value, TIMESTAMP_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        return None


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
    if "step_key" in payload and payload["step_key"] is None:
        del payload["step_key"]  # hashed only when present (approvals.audit.records.record_payload)
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
