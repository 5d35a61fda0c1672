"""The decision record: a hash chain that names the first broken link, append-only on PostgreSQL."""

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction

from approvals.audit.models import DecisionRecord
from approvals.audit.records import GENESIS_HASH, chain_verify, record_decision, record_payload
from tests.audit.chain import append_records, tamper

pytestmark = pytest.mark.django_db


def test_records_link_to_the_one_before(requester):
    records = append_records(3, actor=requester)
    assert records[0].prev_hash == GENESIS_HASH
    assert [r.seq for r in records] == [1, 2, 3]
    assert records[1].prev_hash == records[0].hash and records[2].prev_hash == records[1].hash
    assert records[0].actor_name == requester.username
    verdict = chain_verify()
    assert verdict.ok and verdict.length == 3 and verdict.head_hash == records[2].hash


@pytest.mark.django_db(transaction=True)
def test_record_outside_a_transaction_is_refused():
    with pytest.raises(RuntimeError):
        record_decision(actor=None, action="x", object_type="t", object_id=1)
    assert DecisionRecord.objects.count() == 0


def test_altered_row_is_named_by_verify():
    records = append_records(5)
    tamper("UPDATE approvals_decisionrecord SET reason = %s WHERE seq = %s", ["forged", 3])
    verdict = chain_verify()
    assert not verdict.ok
    assert verdict.broken_seq == 3
    assert verdict.head_hash == records[1].hash


def test_deleted_row_is_named_by_verify():
    append_records(4)
    tamper("DELETE FROM approvals_decisionrecord WHERE seq = %s", [2])
    verdict = chain_verify()
    assert not verdict.ok and verdict.broken_seq == 3


@pytest.mark.parametrize(
    "statement", ["UPDATE approvals_decisionrecord SET reason = 'x'", "DELETE FROM approvals_decisionrecord"]
)
def test_database_refuses_update_and_delete(statement):
    append_records(2)
    with pytest.raises(DatabaseError, match="append-only"):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(statement)
    assert list(DecisionRecord.objects.values_list("reason", flat=True)) == ["r", "r"]


def _append_step(step_key: str | None, *, action: str = "rollout.hold", object_id: int = 7, reason: str = "r"):
    with transaction.atomic():
        return record_decision(
            actor=None, action=action, object_type="rollout", object_id=object_id, reason=reason, step_key=step_key
        )


def test_an_append_whose_step_key_is_in_the_chain_appends_nothing_and_returns_the_first_record():
    first = _append_step("rollout-7/wave-0/hold/inconclusive")
    again = _append_step("rollout-7/wave-0/hold/inconclusive", reason="a retried activity says it again")
    after = _append_step(None, action="rollout.paused")

    assert again.pk == first.pk and again.reason == "r"
    assert DecisionRecord.objects.filter(step_key="rollout-7/wave-0/hold/inconclusive").count() == 1
    # The skipped append took no seq and left no gap: the next record links to the first one.
    assert (after.seq, after.prev_hash) == (first.seq + 1, first.hash)
    assert chain_verify().ok and chain_verify().length == 2


def test_a_step_key_names_one_decision_only():
    _append_step("rollout-7/wave-0/promote", action="rollout.promote_auto")
    with pytest.raises(ValueError, match="already names rollout.promote_auto"):
        _append_step("rollout-7/wave-0/promote", action="rollout.halt")
    assert DecisionRecord.objects.count() == 1


def test_the_database_refuses_a_second_record_with_the_same_step_key():
    first = _append_step("rollout-7/wave-0/halt", action="rollout.halt")
    copy = DecisionRecord(
        seq=first.seq + 1,
        created_at=first.created_at,
        actor_name=first.actor_name,
        action=first.action,
        object_type=first.object_type,
        object_id=first.object_id,
        prev_hash=first.hash,
        hash="f" * 64,
        step_key=first.step_key,
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        copy.save(force_insert=True)
    assert DecisionRecord.objects.count() == 1


def test_the_hash_covers_a_step_key_and_records_without_one_hash_as_they_always_did():
    plain = _append_step(None)
    keyed = _append_step("rollout-7/wave-1/hold/promotion")

    # A record without a step key (every record from before the column) hashes the same fields as before.
    assert "step_key" not in record_payload(plain)
    assert record_payload(keyed)["step_key"] == "rollout-7/wave-1/hold/promotion"
    tamper("UPDATE approvals_decisionrecord SET step_key = %s WHERE seq = %s", ["rollout-7/wave-9/hold/x", keyed.seq])
    verdict = chain_verify()
    assert not verdict.ok and verdict.broken_seq == keyed.seq
