"""Signed checkpoints and record signatures: what the owner of the record table can no longer do unnoticed.

Each attack runs as the table's owner could (raw SQL, triggers disabled or dropped); verification must report it
through chain_verify, `manage.py audit_verify`, the API and the auditors' page, and must never sign it.
"""

from __future__ import annotations

import base64
import importlib
import io
import json
import stat
import zipfile

import pytest
from django.core.management import CommandError, call_command
from django.db import DatabaseError, connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.state import StateApps
from django.urls import reverse

from approvals.audit.checkpoints import (
    checkpoint_after_verify,
    checkpoint_if_moved,
    checkpoint_log_lines,
    checkpoint_log_path,
)
from approvals.audit.export import audit_export
from approvals.audit.keys import audit_key_id, audit_key_retire_current
from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify
from approvals.audit.tasks import audit_checkpoint_task
from approvals.audit.verify import audit_bundle_verify
from ota_project.celery import app as celery_app
from ota_project.roles import Role
from tests.audit.chain import append_records, as_table_owner, rewrite_chain
from tests.support.html import find, visible_text
from tests.web.helpers import page_client

pytestmark = pytest.mark.django_db

legacy_migration = importlib.import_module("approvals.migrations.0005_decision_record_signatures")


def _apps_at_legacy_migration() -> StateApps:
    """The models as that migration sees them (the decision record was then approvals.DecisionRecord)."""
    return MigrationLoader(connection).project_state(("approvals", "0005_decision_record_signatures")).apps


def _run(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    try:
        call_command(*args, stdout=out, stderr=err)
    except SystemExit as exc:
        assert isinstance(exc.code, int)  # the commands exit with a status number (sys.exit(1))
        return exc.code, out.getvalue(), err.getvalue()
    return 0, out.getvalue(), err.getvalue()


def _checkpointed_chain(n: int = 5) -> list[DecisionRecord]:
    records = append_records(n)
    verdict, checkpoint = checkpoint_after_verify()
    assert verdict.ok and checkpoint is not None and checkpoint.seq == n
    return records


def _truncate_as_owner() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no deferred checks of this test's inserts pending
        cursor.execute("SET LOCAL ota.allow_decision_record_reset = 'off'")  # not the test runner's reset
        cursor.execute("DROP TRIGGER approvals_decisionrecord_no_truncate ON approvals_decisionrecord")
        cursor.execute("TRUNCATE approvals_decisionrecord")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


# --- an untouched chain --------------------------------------------------------------------------------------------


def test_records_are_signed_at_append_by_the_audit_key():
    (record,) = append_records(1)
    record.refresh_from_db()
    assert record.key_id == audit_key_id()
    assert record.signature is not None
    assert len(base64.b64decode(record.signature, validate=True)) == 64


def test_an_untouched_chain_verifies_and_gets_one_signed_checkpoint_of_its_head():
    records = append_records(3)
    verdict, checkpoint = checkpoint_after_verify()
    assert verdict.ok and verdict.length == 3 and verdict.problems == ()
    assert checkpoint is not None and (checkpoint.number, checkpoint.seq) == (1, 3)
    assert checkpoint.head_hash == records[-1].hash and checkpoint.key_id == audit_key_id()

    verdict, again = checkpoint_after_verify()
    assert verdict.ok and verdict.checkpoints == 1 and verdict.checkpoint_seq == 3
    assert again is None  # the head did not move: nothing new to sign
    (line,) = checkpoint_log_lines()
    assert set(json.loads(line)) == {"v", "number", "seq", "head_hash", "signed_at", "key_id", "prev", "sig"}
    assert stat.S_IMODE(checkpoint_log_path().stat().st_mode) == 0o600


def test_the_periodic_task_signs_only_when_the_head_moved():
    assert "approvals.audit_checkpoint" in {entry["task"] for entry in celery_app.conf.beat_schedule.values()}
    assert audit_checkpoint_task() is None  # no records, no checkpoint
    append_records(2)
    assert audit_checkpoint_task() == 2
    assert audit_checkpoint_task() is None
    append_records(1)
    assert audit_checkpoint_task() == 3
    assert [json.loads(line)["seq"] for line in checkpoint_log_lines()] == [2, 3]


# --- the attacks, each reported by every verification surface ------------------------------------------------------


def _rewrite(records: list[DecisionRecord]) -> None:
    rewrite_chain(2, reason="nobody decided this")


def _rewrite_unsigned(records: list[DecisionRecord]) -> None:
    rewrite_chain(2, reason="nobody decided this", strip_signatures=True)


def _delete_tail(records: list[DecisionRecord]) -> None:
    as_table_owner("DELETE FROM approvals_decisionrecord WHERE seq > %s", [3])


def _truncate(records: list[DecisionRecord]) -> None:
    _truncate_as_owner()


ATTACKS = {
    "edit and recompute the later hashes": (
        _rewrite,
        2,
        "its signature does not match its hash (the record was altered and its hash recomputed)",
    ),
    "edit, recompute and strip the signatures": (_rewrite_unsigned, 5, "does not match the signed checkpoint #1"),
    "delete the newest records": (_delete_tail, None, "the chain ends at #3 but checkpoint #1 (signed at "),
    "truncate the table": (_truncate, None, "the record table is empty but 1 signed checkpoint exists"),
}


@pytest.fixture(params=list(ATTACKS))
def attack(request):
    """A checkpointed chain of five records, then one attack; (broken seq, expected problem) and the records."""
    records = _checkpointed_chain()
    run, broken_seq, problem = ATTACKS[request.param]
    run(records)
    return broken_seq, problem, records


def test_chain_verify_reports_the_attack(attack):
    broken_seq, problem, records = attack
    verdict = chain_verify()
    assert not verdict.ok
    assert verdict.broken_seq == broken_seq
    assert problem in verdict.problem


def test_attacks_are_never_signed(attack):
    lines = checkpoint_log_lines()
    assert checkpoint_after_verify()[1] is None
    assert checkpoint_if_moved() is None
    assert checkpoint_log_lines() == lines


def test_audit_verify_command_exits_1_reporting_the_attack(attack):
    broken_seq, problem, records = attack
    status, out, err = _run("audit_verify")
    assert status == 1 and out == ""
    assert problem in err
    where = f"BROKEN at record #{broken_seq}: " if broken_seq else "decision record: FAILED: "
    assert where in err


def test_api_verify_reports_the_attack(attack, auditor, client_for):
    broken_seq, problem, records = attack
    body = client_for(auditor).get("/api/v1/audit/verify/").json()
    assert body["ok"] is False and body["broken_seq"] == broken_seq
    assert problem in body["problem"]


def test_auditors_page_reports_the_attack(attack, auditor):
    broken_seq, problem, records = attack
    client = page_client(auditor)
    client.post(reverse("web-audit:verify"))
    body = client.get(reverse("web-audit:records")).content.decode()
    alert = visible_text(find(body, class_="error-state"))
    assert "Verification failed" in alert or f"Broken at record #{broken_seq}" in alert
    assert problem in visible_text(body)


def test_the_tail_deletion_message_names_the_checkpoint_head_and_hash():
    records = _checkpointed_chain()
    _delete_tail(records)
    problem = chain_verify().problem
    assert problem.startswith("the chain ends at #3 but checkpoint #1 (signed at ")
    assert problem.endswith(f"says the head was #5 with hash {records[-1].hash}: records were deleted")


def test_the_database_refuses_truncate_until_the_owner_drops_the_trigger():
    _checkpointed_chain(3)
    with pytest.raises(DatabaseError, match="append-only: TRUNCATE refused"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("SET LOCAL ota.allow_decision_record_reset = 'off'")
            cursor.execute("TRUNCATE approvals_decisionrecord")
    assert DecisionRecord.objects.count() == 3 and chain_verify().ok

    _truncate_as_owner()
    assert DecisionRecord.objects.count() == 0
    verdict = chain_verify()
    assert not verdict.ok and verdict.length == 0
    assert verdict.problem.startswith("the record table is empty but 1 signed checkpoint exists")


def test_an_appended_record_without_a_signature_is_reported():
    _checkpointed_chain(3)
    append_records(2)
    as_table_owner("UPDATE approvals_decisionrecord SET signature = NULL WHERE seq = %s", [5])
    verdict = chain_verify()
    assert not verdict.ok and verdict.broken_seq == 5
    assert "carries no signature and no signed checkpoint covers it" in verdict.problem


def test_a_record_signed_by_an_unknown_key_is_reported():
    append_records(2)
    as_table_owner("UPDATE approvals_decisionrecord SET key_id = %s WHERE seq = %s", ["ab" * 32, 2])
    verdict = chain_verify()
    assert not verdict.ok and verdict.broken_seq == 2
    assert "neither the current audit key nor a retired one" in verdict.problem


# --- the checkpoint log itself ---------------------------------------------------------------------------------------


def _rewrite_log(change) -> None:
    lines = checkpoint_log_lines()
    checkpoint_log_path().write_text("".join(change(lines)))


def test_a_forged_checkpoint_is_reported_and_not_trusted():
    records = _checkpointed_chain(3)
    as_table_owner("DELETE FROM approvals_decisionrecord WHERE seq = %s", [3])

    def forge(lines: list[str]) -> list[str]:
        entry = json.loads(lines[0])
        entry["seq"], entry["head_hash"] = 2, records[1].hash  # "the head was #2": would hide the deletion
        return [json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n"]

    _rewrite_log(forge)
    verdict = chain_verify()
    assert not verdict.ok and verdict.broken_seq is None
    assert verdict.problem == "checkpoint #1 (line 1): checkpoint signature invalid (forged or altered)"
    status, _, err = _run("audit_verify")
    assert status == 1 and "checkpoint signature invalid" in err
    assert checkpoint_after_verify()[1] is None


def test_a_removed_checkpoint_line_breaks_the_log():
    append_records(2)
    checkpoint_after_verify()
    append_records(1)
    checkpoint_after_verify()
    _rewrite_log(lambda lines: lines[1:])
    verdict = chain_verify()
    assert not verdict.ok
    assert "checkpoint #2 is on line 1: checkpoints were removed or inserted" in verdict.problems


# --- key rotation ----------------------------------------------------------------------------------------------------


def test_records_and_checkpoints_of_a_retired_key_still_verify(settings):
    _checkpointed_chain(2)
    old_key_id = audit_key_retire_current()
    append_records(2)
    verdict, checkpoint = checkpoint_after_verify()
    assert verdict.ok, verdict.problems
    assert checkpoint is not None and checkpoint.key_id == audit_key_id() != old_key_id
    assert DecisionRecord.objects.get(seq=1).key_id == old_key_id
    assert audit_bundle_verify(audit_export(fmt="jsonl")).ok

    (settings.AUDIT_RETIRED_KEYS_DIR / f"{old_key_id}.pem").unlink()  # the retired public key is lost
    verdict = chain_verify()
    assert not verdict.ok and verdict.broken_seq == 1
    assert f"signed by key {old_key_id}, which is neither the current audit key nor a retired one" in verdict.problem


# --- records from before signing at append time ------------------------------------------------------------------------


def test_the_migration_pins_unsigned_legacy_records_with_a_signed_checkpoint():
    append_records(4)
    as_table_owner("UPDATE approvals_decisionrecord SET signature = NULL, key_id = NULL")
    verdict = chain_verify()
    assert not verdict.ok and verdict.broken_seq == 1 and "carries no signature" in verdict.problem

    legacy_migration.sign_legacy_head(_apps_at_legacy_migration(), None)

    verdict = chain_verify()
    assert verdict.ok and verdict.unsigned_legacy == 4 and verdict.checkpoint_seq == 4
    rewrite_chain(2, reason="rewritten legacy")  # still pinned: the checkpoint signed the old head
    assert "does not match the signed checkpoint #1" in chain_verify().problem


def test_the_migration_signs_no_checkpoint_over_a_broken_chain():
    append_records(3)
    as_table_owner("UPDATE approvals_decisionrecord SET signature = NULL, reason = 'x' WHERE seq = 2")
    legacy_migration.sign_legacy_head(_apps_at_legacy_migration(), None)
    assert checkpoint_log_lines() == []


# --- export bundles ------------------------------------------------------------------------------------------------------


def _members(bundle: bytes) -> dict[str, bytes]:
    with zipfile.ZipFile(io.BytesIO(bundle)) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _rezip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def test_an_export_carries_the_checkpoint_log_bound_by_the_signed_manifest():
    append_records(3)
    checkpoint_after_verify()
    append_records(2)
    members = _members(audit_export(fmt="jsonl"))
    manifest = json.loads(members["manifest.json"])
    lines = members["checkpoints.jsonl"].decode().splitlines(keepends=True)
    assert lines == checkpoint_log_lines()  # the export's own verification signed head #5
    assert [json.loads(line)["seq"] for line in lines] == [3, 5]
    assert manifest["bundle_version"] == 2 and manifest["checkpoint_count"] == 2
    assert audit_bundle_verify(_rezip(members)).ok


def test_audit_verify_bundle_fails_when_a_checkpoint_in_the_bundle_was_altered(tmp_path):
    append_records(3)
    members = _members(audit_export(fmt="jsonl"))
    entry = json.loads(members["checkpoints.jsonl"])
    entry["seq"] = 2
    members["checkpoints.jsonl"] = (json.dumps(entry, sort_keys=True, separators=(",", ":")) + "\n").encode()
    forged = tmp_path / "forged.zip"
    forged.write_bytes(_rezip(members))

    status, out, err = _run("audit_verify", "--bundle", str(forged))

    assert status == 1 and out == ""
    assert "checkpoints.jsonl does not match the sha256 in the signed manifest" in err
    assert "checkpoint #1 (line 1): checkpoint signature invalid" in err


def test_a_bundle_exported_after_a_tail_deletion_fails_verification(tmp_path):
    records = _checkpointed_chain(5)
    _delete_tail(records)
    bundle = tmp_path / "after-deletion.zip"
    bundle.write_bytes(audit_export(fmt="jsonl"))

    status, _, err = _run("audit_verify", "--bundle", str(bundle))

    assert status == 1
    assert "the bundle ends at #3 but checkpoint #1" in err and "records were deleted" in err


def test_audit_key_rotate_keeps_old_signatures_verifiable_and_records_the_rotation(settings, make_user):
    officer = make_user(Role.SECURITY_OFFICER, username="sofia")
    _checkpointed_chain(2)
    _run("keys", "create", "--role", "audit-checkpoint", "--actor", "sofia")  # registers the key that signs (#3)
    old_key_id = audit_key_id()

    status, out, _ = _run("keys", "rotate", "--role", "audit-checkpoint", "--actor", "sofia", "--reason", "yearly")

    new_key_id = audit_key_id()
    assert status == 0 and "rotated audit-checkpoint" in out
    assert new_key_id != old_key_id and (settings.AUDIT_RETIRED_KEYS_DIR / f"{old_key_id}.pem").exists()
    rotation = DecisionRecord.objects.get(action="audit.key_rotate")
    assert rotation.before == {"key_id": old_key_id} and rotation.after is not None
    assert rotation.after["key_id"] == new_key_id
    assert rotation.key_id == new_key_id and rotation.actor == officer and rotation.reason == "yearly"
    # The old key's last checkpoint covers the head before the rotation, the new key's first one the rotation.
    assert [json.loads(line)["key_id"] for line in checkpoint_log_lines()] == [old_key_id, old_key_id, new_key_id]
    assert _run("audit_verify")[0] == 0


def test_audit_key_rotate_is_refused_on_a_broken_chain_and_changes_nothing(make_user):
    make_user(Role.SECURITY_OFFICER, username="sofia")
    records = _checkpointed_chain(5)
    _run("keys", "create", "--role", "audit-checkpoint", "--actor", "sofia")
    _delete_tail(records)
    old_key_id = audit_key_id()
    lines = checkpoint_log_lines()

    with pytest.raises(CommandError, match="does not verify, so the audit key is not rotated"):
        call_command("keys", "rotate", "--role", "audit-checkpoint", "--actor", "sofia")

    assert audit_key_id() == old_key_id and checkpoint_log_lines() == lines
    assert not DecisionRecord.objects.filter(action="audit.key_rotate").exists()
