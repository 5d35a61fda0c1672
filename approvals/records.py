"""The hash-chained decision record: append (inside the caller's transaction) and verify.

This module is the one part of `approvals` that other apps may import: it depends on nothing
else in the project, so devices and rollouts can record their decisions without a cycle.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.utils import timezone

from approvals.models import DecisionRecord

GENESIS_HASH = "0" * 64
# Any 64-bit number will do; it only has to be the same for every process that appends.
_CHAIN_LOCK_KEY = 0x07A_DEC1_5105


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_payload(record: DecisionRecord) -> dict[str, Any]:
    """The fields a record's hash covers, in the form they are hashed."""
    return {
        "seq": record.seq,
        "created_at": _timestamp(record.created_at),
        "actor": record.actor_name,
        "actor_id": record.actor_id,
        "action": record.action,
        "object_type": record.object_type,
        "object_id": record.object_id,
        "revision": record.revision,
        "before": record.before,
        "after": record.after,
        "reason": record.reason,
        "prev_hash": record.prev_hash,
    }


def record_hash(record: DecisionRecord) -> str:
    """sha256 over the canonical JSON of the record's payload."""
    return hashlib.sha256(canonical_json(record_payload(record)).encode()).hexdigest()


def _lock_chain() -> None:
    # Serialises appends across processes so that seq and prev_hash form one line.
    # SQLite serialises writers by itself (one write transaction at a time).
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])


def _json_safe(value: Any) -> Any:
    """Round-trip through canonical JSON so what is hashed is exactly what is stored."""
    return None if value is None else json.loads(canonical_json(value))


def record_decision(
    *,
    actor: AbstractBaseUser | None,
    action: str,
    object_type: str,
    object_id: str | int,
    revision: int | None = None,
    before: Any = None,
    after: Any = None,
    reason: str = "",
    system_actor: str = "system",
) -> DecisionRecord:
    """Append one decision to the chain; must run inside the transaction that makes the decision."""
    if not connection.in_atomic_block:
        raise RuntimeError("record_decision must run inside the transaction of the decision it records")
    _lock_chain()
    last = DecisionRecord.objects.order_by("-seq").only("seq", "hash").first()
    record = DecisionRecord(
        seq=(last.seq + 1) if last else 1,
        created_at=timezone.now(),
        actor=actor if actor is not None and actor.is_authenticated else None,
        actor_name=actor.get_username() if actor is not None and actor.is_authenticated else f"system:{system_actor}",
        action=action,
        object_type=object_type,
        object_id=str(object_id),
        revision=revision,
        before=_json_safe(before),
        after=_json_safe(after),
        reason=reason,
        prev_hash=last.hash if last else GENESIS_HASH,
    )
    record.hash = record_hash(record)
    record.save(force_insert=True)
    return record


@dataclass(frozen=True)
class ChainVerdict:
    """Result of walking the chain: its length and the first broken link, if any."""

    length: int
    ok: bool
    broken_seq: int | None = None
    problem: str = ""
    head_hash: str = GENESIS_HASH


def iter_records(batch_size: int = 2000) -> Iterator[DecisionRecord]:
    """All records in chain order, fetched in batches (memory stays flat for long chains)."""
    return DecisionRecord.objects.order_by("seq").iterator(chunk_size=batch_size)


def chain_verify() -> ChainVerdict:
    """Walk the chain from the genesis and name the first record whose link or content was altered."""
    expected_prev = GENESIS_HASH
    expected_seq = 1
    count = 0
    with transaction.atomic():
        for record in iter_records():
            count += 1
            if record.seq != expected_seq:
                return ChainVerdict(
                    count,
                    False,
                    record.seq,
                    f"expected record #{expected_seq}, found #{record.seq} (a record is missing)",
                    expected_prev,
                )
            if record.prev_hash != expected_prev:
                return ChainVerdict(
                    count, False, record.seq, "prev_hash does not match the hash of the record before it", expected_prev
                )
            if record_hash(record) != record.hash:
                return ChainVerdict(
                    count, False, record.seq, "content does not match its hash (the record was altered)", expected_prev
                )
            expected_prev = record.hash
            expected_seq += 1
    return ChainVerdict(count, True, head_hash=expected_prev)
