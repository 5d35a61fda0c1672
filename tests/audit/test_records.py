"""The decision record: a hash chain that names the first broken link, append-only on PostgreSQL."""

import pytest
from django.db import DatabaseError, connection, transaction

from approvals.audit.models import DecisionRecord
from approvals.audit.records import GENESIS_HASH, chain_verify, record_decision
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
