"""`manage.py audit_verify` and `manage.py audit_export`: chain length and ok, exit 1 naming the broken link."""

import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from approvals.audit.keys import audit_key_id, audit_public_key_pem
from approvals.audit.models import DecisionRecord
from ota_project.db import database_url
from tests.audit.chain import append_records, tamper

pytestmark = pytest.mark.django_db

REPO_ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of a management command run in-process."""
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except SystemExit as exc:
        assert isinstance(exc.code, int)  # the commands exit with a status number (sys.exit(1))
        return exc.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def test_audit_verify_prints_the_chain_length_and_ok():
    records = append_records(3)
    status, out, _ = _run("audit_verify")
    assert status == 0
    assert out.strip() == f"decision record: 3 records, ok, head {records[-1].hash}"


def test_audit_verify_of_an_empty_chain_is_ok():
    status, out, _ = _run("audit_verify")
    assert status == 0 and out.startswith("decision record: 0 records, ok")


def test_audit_verify_exits_1_naming_the_altered_record():
    append_records(5)
    tamper("UPDATE approvals_decisionrecord SET after = %s WHERE seq = %s", ['{"i": 99}', 4])
    status, out, err = _run("audit_verify")
    assert status == 1 and out == ""
    assert "BROKEN at record #4: content does not match its hash" in err


def test_audit_verify_exits_1_naming_the_record_after_a_deleted_one():
    append_records(4)
    tamper("DELETE FROM approvals_decisionrecord WHERE seq = %s", [2])
    status, _, err = _run("audit_verify")
    assert status == 1 and "BROKEN at record #3" in err and "a record is missing" in err


def test_audit_export_writes_a_bundle_that_audit_verify_accepts_with_the_pinned_key(tmp_path, auditor):
    append_records(3)
    output = tmp_path / "out" / "bundle.zip"
    key_file = tmp_path / "server.pem"
    key_file.write_text(audit_public_key_pem())

    status, out, _ = _run("audit_export", "--format", "csv", "--output", str(output), "--actor", auditor.username)

    assert status == 0
    assert "exported 3 records (#1..#3, full chain) as csv" in out
    assert "chain at export: ok, 3 records" in out and f"signed by key {audit_key_id()}" in out
    assert "recorded as record #4 (audit.export)" in out
    assert DecisionRecord.objects.get(seq=4).actor_name == auditor.username
    assert sorted(zipfile.ZipFile(output).namelist()) == [
        "audit_public_key.pem",
        "checkpoints.jsonl",
        "manifest.json",
        "manifest.sig",
        "records.csv",
    ]
    assert [p.name for p in output.parent.iterdir()] == ["bundle.zip"]  # no temporary file left behind

    status, out, err = _run("audit_verify", "--bundle", str(output), "--public-key", str(key_file))
    assert status == 0, err
    assert "3 records (#1..#3, full chain), ok" in out and err == ""


def test_audit_export_of_a_seq_range_is_recorded_by_the_system_actor(tmp_path):
    append_records(5)
    output = tmp_path / "range.zip"
    status, out, _ = _run("audit_export", "--output", str(output), "--from-seq", "2", "--to-seq", "3")
    assert status == 0 and "exported 2 records (#2..#3, filter" in out
    export_record = DecisionRecord.objects.get(action="audit.export")
    assert export_record.actor_name == "system:audit_export"
    assert export_record.after is not None
    assert export_record.after["filter"]["from_seq"] == 2

    status, out, err = _run("audit_verify", "--bundle", str(output))
    assert status == 0 and "warning: checked against the key inside the bundle only" in err


def test_audit_verify_bundle_exits_1_when_the_records_were_altered(tmp_path):
    append_records(3)
    output = tmp_path / "bundle.zip"
    _run("audit_export", "--output", str(output))
    with zipfile.ZipFile(output) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["records.jsonl"] = members["records.jsonl"].replace(b'"reason":"r"', b'"reason":"R"', 1)
    forged = tmp_path / "forged.zip"
    with zipfile.ZipFile(forged, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)

    status, out, err = _run("audit_verify", "--bundle", str(forged))

    assert status == 1 and out == ""
    assert "FAILED" in err and "records.jsonl does not match the sha256 in the signed manifest" in err
    assert "line 1 (record #1): content does not match its hash" in err


def test_audit_verify_bundle_exits_1_when_signed_by_another_key(settings, tmp_path):
    append_records(2)
    pinned = tmp_path / "pinned.pem"
    pinned.write_text(audit_public_key_pem())
    settings.PKCS11_LABEL_PREFIX = "other-server"  # the audit key of another server (another token label)
    output = tmp_path / "bundle.zip"
    _run("audit_export", "--output", str(output))

    status, _, err = _run("audit_verify", "--bundle", str(output), "--public-key", str(pinned))

    assert status == 1 and "not the pinned key" in err


def test_audit_export_with_an_unknown_actor_writes_and_records_nothing(tmp_path):
    append_records(1)
    output = tmp_path / "bundle.zip"
    with pytest.raises(CommandError, match="no active user named 'nobody'"):
        call_command("audit_export", "--output", str(output), "--actor", "nobody")
    assert not output.exists() and DecisionRecord.objects.count() == 1


def test_audit_export_refuses_an_inverted_range_and_records_nothing(tmp_path):
    append_records(3)
    output = tmp_path / "bundle.zip"
    with pytest.raises(CommandError, match="The export range is not valid"):
        call_command("audit_export", "--output", str(output), "--from-seq", "3", "--to-seq", "1")
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor a temporary file
    assert DecisionRecord.objects.count() == 3


def test_audit_export_does_not_overwrite_an_existing_file_without_force(tmp_path):
    output = tmp_path / "bundle.zip"
    output.write_bytes(b"earlier evidence")
    with pytest.raises(CommandError, match="exists"):
        call_command("audit_export", "--output", str(output))
    assert output.read_bytes() == b"earlier evidence"
    call_command("audit_export", "--output", str(output), "--force", stdout=io.StringIO())
    assert zipfile.is_zipfile(output)


def test_audit_verify_of_a_missing_bundle_file_is_a_command_error(tmp_path):
    with pytest.raises(CommandError, match="cannot read"):
        call_command("audit_verify", "--bundle", str(tmp_path / "missing.zip"))


@pytest.mark.django_db(transaction=True)
def test_manage_py_audit_verify_exit_status_is_0_then_1_after_tampering(settings, tmp_path):
    records = append_records(2)
    env = {
        **os.environ,
        "DATABASE_URL": database_url(),  # the test database
        "OTA_DATA_DIR": str(tmp_path / "data"),
        # The same server: the audit key that signed the records and the checkpoint log that pins them.
        "OTA_PKCS11_LABEL_PREFIX": settings.PKCS11_LABEL_PREFIX,
        "OTA_AUDIT_CHECKPOINT_LOG": str(settings.AUDIT_CHECKPOINT_LOG_PATH),
        "OTA_AUDIT_RETIRED_KEYS_DIR": str(settings.AUDIT_RETIRED_KEYS_DIR),
        "SECRET_KEY": "test-only-secret",
    }
    command = [sys.executable, "manage.py", "audit_verify"]

    ok = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"decision record: 2 records, ok, head {records[-1].hash}"

    tamper("UPDATE approvals_decisionrecord SET reason = %s WHERE seq = %s", ["forged", 1])
    broken = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert broken.returncode == 1 and "BROKEN at record #1" in broken.stderr
