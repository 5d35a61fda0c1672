"""Signed export bundles of the decision record: layout, JSONL and CSV round trips, and tamper detection."""

import base64
import csv
import hashlib
import io
import json
import zipfile
from datetime import timedelta
from functools import partial

import pytest
from django.utils import timezone

from approvals.audit.export import audit_export
from approvals.audit.keys import audit_key_id, audit_public_key_pem, public_key_id
from approvals.audit.models import DecisionRecord
from approvals.audit.records import GENESIS_HASH, record_hash
from approvals.audit.verify import audit_bundle_verify
from ota_project.errors import InvalidInput
from tests.audit.chain import append_records, tamper

pytestmark = pytest.mark.django_db

# Records whose `after` exercises nesting, floats, None, booleans and CSV-hostile text.
_append = partial(append_records, after=lambda i: {"i": i, "nested": {"list": [1, 2.5, None, True], "text": "a,b\nc"}})

AWKWARD_REASON = 'line one\r\nline two, "quoted", =SUM(A1)\u2028 ünïcødé ✓'


def _members(bundle: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rebuild(bundle: bytes, name: str, change) -> bytes:
    """The bundle re-zipped with one member's bytes changed (what an attacker editing a file would do)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for member, data in _members(bundle).items():
            archive.writestr(member, change(data) if member == name else data)
    return out.getvalue()


def _flip_byte(data: bytes, needle: bytes) -> bytes:
    index = data.index(needle)
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def test_jsonl_bundle_of_the_whole_chain_verifies_against_the_pinned_key(requester):
    records = _append(4, actor=requester)
    bundle = audit_export(fmt="jsonl")

    verdict = audit_bundle_verify(bundle, trusted_public_key_pem=audit_public_key_pem())

    assert verdict.ok, verdict.problems
    assert verdict.key_pinned and verdict.key_id == audit_key_id()
    assert verdict.record_count == 4 and verdict.head_hash == records[-1].hash
    lines = _members(bundle)["records.jsonl"].decode().splitlines()
    assert [json.loads(line)["hash"] for line in lines] == [r.hash for r in records]
    assert json.loads(lines[0])["prev_hash"] == GENESIS_HASH


def test_bundle_holds_records_manifest_signature_and_public_key(auditor):
    records = _append(3)
    bundle = audit_export(actor=auditor, fmt="jsonl")

    members = _members(bundle)
    assert set(members) == {
        "records.jsonl",
        "manifest.json",
        "manifest.sig",
        "audit_public_key.pem",
        "checkpoints.jsonl",
    }
    manifest = json.loads(members["manifest.json"])
    assert manifest["format"] == "jsonl" and manifest["algorithm"] == "ed25519"
    assert manifest["record_count"] == 3 and (manifest["first_seq"], manifest["last_seq"]) == (1, 3)
    assert manifest["head_hash"] == records[-1].hash
    assert manifest["records_sha256"] == hashlib.sha256(members["records.jsonl"]).hexdigest()
    assert manifest["chain_at_export"] == {
        "ok": True,
        "length": 3,
        "broken_seq": None,
        "problem": "",
        "head_hash": records[-1].hash,
    }
    assert manifest["full_chain"] is True
    assert manifest["filter"] == {"from_seq": None, "to_seq": None, "since": None, "until": None}
    assert manifest["exported_by"] == auditor.username and manifest["created_at"].endswith("Z")
    assert manifest["key_id"] == audit_key_id() == public_key_id(members["audit_public_key.pem"])
    assert len(base64.b64decode(members["manifest.sig"].strip(), validate=True)) == 64


def test_each_exported_row_carries_every_hashed_field_and_its_hash():
    (record,) = _append(1)
    row = json.loads(_members(audit_export(fmt="jsonl"))["records.jsonl"])
    assert set(row) == {
        "seq",
        "created_at",
        "actor",
        "actor_id",
        "action",
        "object_type",
        "object_id",
        "revision",
        "before",
        "after",
        "reason",
        "prev_hash",
        "hash",
    }
    assert row["hash"] == record_hash(record) == record.hash
    payload = {k: v for k, v in row.items() if k != "hash"}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert hashlib.sha256(canonical.encode()).hexdigest() == row["hash"]


def test_export_is_recorded_after_the_bundle_and_names_its_manifest(auditor):
    _append(2)
    bundle = audit_export(actor=auditor, fmt="csv", reason="quarterly audit")

    manifest_bytes = _members(bundle)["manifest.json"]
    export_record = DecisionRecord.objects.get(action="audit.export")
    assert export_record.seq == 3  # appended after the two exported records, not inside the bundle
    assert json.loads(manifest_bytes)["record_count"] == 2
    assert export_record.actor_name == auditor.username and export_record.reason == "quarterly audit"
    assert export_record.object_type == "audit_bundle"
    assert export_record.object_id == hashlib.sha256(manifest_bytes).hexdigest()
    assert export_record.after is not None
    assert export_record.after["head_hash"] == json.loads(manifest_bytes)["head_hash"]

    next_bundle = audit_export(fmt="jsonl")  # the next export carries the record of the first one
    assert audit_bundle_verify(next_bundle).ok
    assert json.loads(_members(next_bundle)["manifest.json"])["record_count"] == 3
    assert DecisionRecord.objects.get(seq=4).actor_name == "system:audit_export"


def test_csv_bundle_round_trips_awkward_values_and_verifies():
    records = _append(3, reason=AWKWARD_REASON, before={"status": "draft", "note": '"x",\n'}, revision=None)
    records += _append(1, revision=7, before=None, reason="")
    bundle = audit_export(fmt="csv")

    verdict = audit_bundle_verify(bundle, trusted_public_key_pem=audit_public_key_pem())

    assert verdict.ok, verdict.problems
    assert verdict.record_count == 4 and verdict.head_hash == records[-1].hash
    text = _members(bundle)["records.csv"].decode()
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert rows[0]["reason"] == AWKWARD_REASON
    assert rows[0]["revision"] == "null" and rows[3]["revision"] == "7"
    assert json.loads(rows[0]["before"]) == {"status": "draft", "note": '"x",\n'}
    assert rows[3]["reason"] == "" and rows[3]["before"] == "null"
    assert [row["hash"] for row in rows] == [r.hash for r in records]


def test_seq_range_export_verifies_and_its_manifest_names_the_filter():
    records = _append(6)
    bundle = audit_export(fmt="jsonl", from_seq=2, to_seq=4)

    verdict = audit_bundle_verify(bundle, trusted_public_key_pem=audit_public_key_pem())

    assert verdict.ok, verdict.problems
    manifest = verdict.manifest
    assert manifest["full_chain"] is False
    assert manifest["filter"] == {"from_seq": 2, "to_seq": 4, "since": None, "until": None}
    assert (manifest["record_count"], manifest["first_seq"], manifest["last_seq"]) == (3, 2, 4)
    assert manifest["head_hash"] == records[3].hash
    assert manifest["chain_at_export"]["length"] == 6


def test_date_range_export_holds_only_records_created_in_the_range():
    _append(3)
    inside = timezone.now()
    _append(2)
    bundle = audit_export(fmt="csv", since=inside, until=inside + timedelta(hours=1))

    verdict = audit_bundle_verify(bundle)

    assert verdict.ok, verdict.problems
    assert (verdict.manifest["first_seq"], verdict.manifest["last_seq"]) == (4, 5)
    assert verdict.manifest["filter"]["since"].endswith("Z")


def test_empty_chain_exports_an_empty_bundle_that_verifies():
    verdict = audit_bundle_verify(audit_export(fmt="jsonl"))
    assert verdict.ok and verdict.record_count == 0 and verdict.manifest["head_hash"] is None


@pytest.mark.parametrize(
    "kwargs",
    [{"fmt": "xml"}, {"fmt": "jsonl", "from_seq": 5, "to_seq": 2}, {"fmt": "jsonl", "from_seq": 0}],
)
def test_invalid_export_requests_are_refused_and_nothing_is_recorded(kwargs):
    _append(2)
    with pytest.raises(InvalidInput):
        audit_export(**kwargs)
    assert DecisionRecord.objects.count() == 2


def test_one_byte_changed_in_the_records_fails_naming_the_row():
    _append(4)
    bundle = audit_export(fmt="jsonl")
    lines = _members(bundle)["records.jsonl"].split(b"\n")
    third_line_offset = len(lines[0]) + len(lines[1]) + 2

    def forge(data: bytes) -> bytes:
        index = data.index(b'"reason":"r"', third_line_offset) + len(b'"reason":"')
        return data[:index] + b"s" + data[index + 1 :]

    verdict = audit_bundle_verify(_rebuild(bundle, "records.jsonl", forge))

    assert not verdict.ok
    assert "records.jsonl does not match the sha256 in the signed manifest" in verdict.problem
    assert verdict.first_bad_seq == 3 and verdict.first_bad_line == 3
    assert any("record #3" in p and "content does not match its hash" in p for p in verdict.problems)


def test_one_byte_changed_in_a_csv_bundle_fails_naming_the_row():
    _append(3)
    bundle = audit_export(fmt="csv")

    def forge(data: bytes) -> bytes:
        rows = data.split(b"\r\n")
        rows[2] = rows[2].replace(b"test.step", b"test.stop")
        return b"\r\n".join(rows)

    verdict = audit_bundle_verify(_rebuild(bundle, "records.csv", forge))

    assert not verdict.ok and verdict.first_bad_seq == 2
    assert "does not match the sha256" in verdict.problem


def test_a_dropped_row_fails_verification():
    _append(4)
    bundle = audit_export(fmt="jsonl")

    def drop_second(data: bytes) -> bytes:
        lines = data.split(b"\n")
        return b"\n".join(lines[:1] + lines[2:])

    verdict = audit_bundle_verify(_rebuild(bundle, "records.jsonl", drop_second))

    assert not verdict.ok and verdict.first_bad_seq == 3
    assert any("a record is missing" in p for p in verdict.problems)


def test_one_byte_changed_in_the_manifest_fails_the_signature_check():
    _append(2)
    bundle = audit_export(fmt="jsonl")

    verdict = audit_bundle_verify(_rebuild(bundle, "manifest.json", lambda d: _flip_byte(d, b'"record_count": 2')))

    assert not verdict.ok
    assert "manifest.sig is not a valid signature of manifest.json" in verdict.problem


def test_a_bundle_signed_by_a_different_key_fails_against_the_pinned_key(settings, tmp_path):
    pinned_pem = audit_public_key_pem()
    settings.PKCS11_LABEL_PREFIX = "attacker"  # an attacker re-signs with a key of their own
    _append(2)  # on a server of their own, whose records their key signed
    forged = audit_export(fmt="jsonl")
    attacker_key_id = audit_key_id()

    assert audit_bundle_verify(forged).ok  # self-consistent: only pinning tells who signed it
    verdict = audit_bundle_verify(forged, trusted_public_key_pem=pinned_pem)
    assert not verdict.ok
    assert verdict.problem == (
        f"the bundle carries key {attacker_key_id}, not the pinned key {public_key_id(pinned_pem)}, "
        "and its signature does not verify with the pinned key"
    )


def test_export_of_a_tampered_chain_reports_the_altered_record():
    _append(5)
    tamper("UPDATE approvals_decisionrecord SET reason = %s WHERE seq = %s", ["forged", 3])
    bundle = audit_export(fmt="jsonl")

    verdict = audit_bundle_verify(bundle, trusted_public_key_pem=audit_public_key_pem())

    assert not verdict.ok and verdict.first_bad_seq == 3
    assert verdict.manifest["chain_at_export"]["ok"] is False
    assert verdict.manifest["chain_at_export"]["broken_seq"] == 3
    assert any("the server found the chain broken at export time: record #3" in p for p in verdict.problems)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda b: b"not a zip at all", "not a readable ZIP file"),
        (lambda b: b[: len(b) // 2], "not a readable ZIP file"),
        (lambda b: _rebuild(b, "manifest.sig", lambda d: b"%%%"), "manifest.sig is not base64"),
        (lambda b: _rebuild(b, "audit_public_key.pem", lambda d: b"junk"), "audit_public_key.pem is not an Ed25519"),
    ],
)
def test_damaged_bundles_are_reported_with_a_reason_not_raised(damage, reason):
    _append(2)
    verdict = audit_bundle_verify(damage(audit_export(fmt="jsonl")))
    assert not verdict.ok and reason in verdict.problem


def test_a_flipped_byte_in_the_compressed_zip_is_reported_not_raised():
    _append(50)
    bundle = audit_export(fmt="jsonl")
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        info = archive.getinfo("records.jsonl")
    middle = info.header_offset + 30 + len(info.filename) + 64 + info.compress_size // 2
    damaged = bundle[:middle] + bytes([bundle[middle] ^ 0xFF]) + bundle[middle + 1 :]

    verdict = audit_bundle_verify(damaged)

    assert not verdict.ok and "records.jsonl" in verdict.problem


def test_an_extra_file_in_the_bundle_fails_verification():
    _append(1)
    bundle = audit_export(fmt="jsonl")
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in _members(bundle).items():
            archive.writestr(name, data)
        archive.writestr("README.txt", b"trust me")

    verdict = audit_bundle_verify(out.getvalue())

    assert not verdict.ok and "unexpected files in the bundle: README.txt" in verdict.problems


@pytest.mark.parametrize("bad_line", [b"[" * 100_000 + b"]" * 100_000, b'{"seq": NaN}', b"\xff\xfe", b"[1,2]"])
def test_hostile_rows_are_named_not_raised(bad_line):
    _append(2)
    bundle = audit_export(fmt="jsonl")

    verdict = audit_bundle_verify(_rebuild(bundle, "records.jsonl", lambda d: d + bad_line + b"\n"))

    assert not verdict.ok and verdict.first_bad_line == 3
    assert "does not match the sha256" in verdict.problem


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_bundle_mixing_records_with_and_without_step_keys_verifies(fmt):
    from django.db import transaction

    from approvals.audit.records import record_decision

    plain = _append(2)
    with transaction.atomic():
        keyed = record_decision(
            actor=None, action="rollout.hold", object_type="rollout", object_id=3, step_key="rollout-3/wave-0/hold/x"
        )
    bundle = audit_export(fmt=fmt)

    verdict = audit_bundle_verify(bundle, trusted_public_key_pem=audit_public_key_pem())

    assert verdict.ok, verdict.problems
    assert verdict.record_count == 3 and verdict.head_hash == keyed.hash
    assert [plain[0].hash, plain[1].hash] == [r.hash for r in DecisionRecord.objects.filter(seq__lte=2)]


def test_a_step_key_altered_in_a_csv_bundle_fails():
    from django.db import transaction

    from approvals.audit.records import record_decision

    with transaction.atomic():
        record_decision(
            actor=None, action="rollout.hold", object_type="rollout", object_id=3, step_key="rollout-3/wave-0/hold/x"
        )
    bundle = audit_export(fmt="csv")
    forged = _rebuild(bundle, "records.csv", lambda data: data.replace(b"wave-0/hold/x", b"wave-1/hold/x"))

    verdict = audit_bundle_verify(forged)

    assert not verdict.ok and verdict.first_bad_seq == 1  # the row's recomputed hash no longer matches
