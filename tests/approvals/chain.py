"""Helpers for decision-record tests: append test records, and tamper with them as an attacker with raw
database access would (bypassing the append-only trigger)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import connection, transaction

from approvals.models import DecisionRecord
from approvals.records import record_decision


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
