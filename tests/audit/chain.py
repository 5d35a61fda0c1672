"""Helpers for decision-record tests: append test records, and tamper with them as an attacker with raw
database access would (bypassing the append-only trigger)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from django.db import connection, transaction

from approvals.audit.models import DecisionRecord
from approvals.audit.records import record_decision, record_hash


def append_records(
    n: int,
    *,
    actor: Any = None,
    action: str = "test.step",
    object_type: str = "test",
    revision: int | None = None,
    before: Any = None,
    after: Callable[[int], Any] = lambda i: {"i": i},
    reason: str = "r",
) -> list[DecisionRecord]:
    """Append `n` records (object ids 0..n-1) in one transaction."""
    with transaction.atomic():
        return [
            record_decision(
                actor=actor,
                action=action,
                object_type=object_type,
                object_id=i,
                revision=revision,
                before=before,
                after=after(i),
                reason=reason,
            )
            for i in range(n)
        ]


def tamper(sql: str, params: list[Any]) -> None:
    """Run SQL with triggers off, as someone with owner rights on the database could."""
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
        cursor.execute(sql, params)
        cursor.execute("SET session_replication_role = DEFAULT")


def as_table_owner(sql: str, params: list[Any] | None = None) -> None:
    """Run SQL with the append-only row trigger disabled the way the table's owner could (ALTER TABLE), then
    enable it again (the DDL is rolled back with the test's transaction anyway)."""
    with connection.cursor() as cursor:
        # ALTER TABLE waits for no deferred foreign-key check of this transaction's inserts: run them now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE approvals_decisionrecord DISABLE TRIGGER approvals_decisionrecord_no_update_delete")
        cursor.execute(sql, params or [])
        cursor.execute("ALTER TABLE approvals_decisionrecord ENABLE TRIGGER approvals_decisionrecord_no_update_delete")
        cursor.execute("SET CONSTRAINTS ALL DEFERRED")


def rewrite_chain(seq: int, *, strip_signatures: bool = False, **changes: Any) -> None:
    """Edit record #seq and recompute its hash and every later hash and link, as the table's owner could; the
    signatures stay as they were (or are removed): without the audit key nobody can sign the new hashes."""
    previous_hash = None
    for record in DecisionRecord.objects.filter(seq__gte=seq).order_by("seq"):
        if record.seq == seq:
            for name, value in changes.items():
                setattr(record, name, value)
        if previous_hash is not None:
            record.prev_hash = previous_hash
        record.hash = record_hash(record)
        previous_hash = record.hash
        as_table_owner(
            "UPDATE approvals_decisionrecord SET reason = %s, after = %s, prev_hash = %s, hash = %s"
            + (", signature = NULL, key_id = NULL" if strip_signatures else "")
            + " WHERE seq = %s",
            [record.reason, json.dumps(record.after), record.prev_hash, record.hash, record.seq],
        )
