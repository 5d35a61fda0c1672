"""The hash-chained decision record: append (inside the caller's transaction) and verify.

Part of the audit room's low part (approvals.audit): it imports no app room, so devices, change control and
rollouts can all record their decisions without a cycle (an import-linter contract keeps it so).
The key that signs each record and the signed checkpoints of the chain head reach it through a
`RecordTrust` that the audit app installs at start-up (approvals.audit.checkpoints), so the
private key and the checkpoint log stay outside the database and outside this module.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypedDict

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from approvals.audit.models import DecisionRecord

GENESIS_HASH = "0" * 64
# Any 64-bit number will do; it only has to be the same for every process that appends.
_CHAIN_LOCK_KEY = 0x07A_DEC1_5105
# Domain separation: the audit key also signs export manifests and checkpoints; a record signature must never be
# mistaken for one of those.
RECORD_SIGNATURE_CONTEXT = b"ota-decision-record:v1:"


@dataclass(frozen=True)
class Checkpoint:
    """A signed statement "the chain head was record #seq with this hash", already checked by its loader."""

    number: int
    seq: int
    head_hash: str
    signed_at: str
    key_id: str


@dataclass(frozen=True)
class CheckpointSet:
    """The checkpoints whose signatures verified, and why the others were rejected."""

    checkpoints: tuple[Checkpoint, ...] = ()
    problems: tuple[str, ...] = ()


# verify(key_id, message, signature): True if valid, False if not, None if the key is unknown.
SignatureVerifier = Callable[[str, bytes, bytes], bool | None]


class RecordTrust(Protocol):
    """What the chain needs from outside the database: a signing key, the known public keys, the checkpoints."""

    def sign(self, message: bytes) -> tuple[str, bytes]:
        """(key id, signature) of `message` by the current audit key."""
        ...

    def verifier(self) -> SignatureVerifier:
        """A signature check over every known public key (current and retired), loaded once."""
        ...

    def checkpoints(self) -> CheckpointSet:
        """The signed checkpoints of the chain head, verified."""
        ...


_trust: RecordTrust | None = None


def record_trust_install(trust: RecordTrust) -> None:
    """Make `trust` sign new records and anchor verification (the audit app, approvals.audit, does this at start-up)."""
    global _trust
    _trust = trust


def _installed_trust() -> RecordTrust:
    if _trust is None:
        raise RuntimeError("no RecordTrust installed: the audit app (approvals.audit) must be in INSTALLED_APPS")
    return _trust


def canonical_json(value: Any) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept, no NaN."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _timestamp(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def record_payload(record: DecisionRecord) -> dict[str, Any]:
    """The fields a record's hash covers, in the form they are hashed.

    The step key is covered only when the record has one: records without one (every record from before the
    column existed) hash exactly as they always did, so they stay verifiable.
    """
    payload = {
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
    # getattr: migration 0005 hashes records through a historical model that has no step_key yet.
    step_key = getattr(record, "step_key", None)
    if step_key is not None:
        payload["step_key"] = step_key
    return payload


def record_hash(record: DecisionRecord) -> str:
    """sha256 over the canonical JSON of the record's payload."""
    return hashlib.sha256(canonical_json(record_payload(record)).encode()).hexdigest()


def record_signing_message(hash_hex: str) -> bytes:
    """The bytes a record's signature covers: its hash (which covers its content and its link)."""
    return RECORD_SIGNATURE_CONTEXT + hash_hex.encode()


def _lock_chain() -> None:
    # Serialises appends across processes so that seq and prev_hash form one line.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_KEY])


def _json_safe(value: Any) -> Any:
    """Round-trip through canonical JSON so what is hashed is exactly what is stored."""
    return None if value is None else json.loads(canonical_json(value))


def record_decision(
    *,
    actor: User | None,
    action: str,
    object_type: str,
    object_id: str | int,
    revision: int | None = None,
    before: Any = None,
    after: Any = None,
    reason: str = "",
    system_actor: str = "system",
    step_key: str | None = None,
) -> DecisionRecord:
    """Append one decision to the chain; must run inside the transaction that makes the decision.

    With a `step_key` the append is idempotent: when the chain already holds a record with that key (the same step
    ran before: a retried activity, a re-run after continue-as-new), nothing is appended and that record is
    returned. The check runs after the chain lock is taken, so it sees every committed append and no other append
    can slip in between; a skipped append touches neither `seq` nor `prev_hash`, so the chain stays one line.
    The partial unique index on `step_key` backs this up at the database.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("record_decision must run inside the transaction of the decision it records")
    _lock_chain()
    if step_key is not None:
        existing = DecisionRecord.objects.filter(step_key=step_key).first()
        if existing is not None:
            if (existing.action, existing.object_type, existing.object_id) != (action, object_type, str(object_id)):
                raise ValueError(
                    f"step key {step_key!r} already names {existing.action} on {existing.object_type}:"
                    f"{existing.object_id}, not {action} on {object_type}:{object_id}"
                )
            return existing
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
        step_key=step_key,
    )
    record.hash = record_hash(record)
    # Signed with a key the database does not hold, so whoever owns the table cannot recompute a valid record.
    key_id, signature = _installed_trust().sign(record_signing_message(record.hash))
    record.key_id = key_id
    record.signature = base64.b64encode(signature).decode()
    record.save(force_insert=True)
    return record


@dataclass(frozen=True)
class ChainVerdict:
    """Result of walking the chain against its signatures and signed checkpoints: length and the first problem."""

    length: int
    ok: bool
    broken_seq: int | None = None
    problem: str = ""
    head_hash: str = GENESIS_HASH
    checkpoints: int = 0
    checkpoint_seq: int | None = None
    unsigned_legacy: int = 0
    problems: tuple[str, ...] = field(default_factory=tuple)


class _CheckpointSummary(TypedDict):
    checkpoints: int
    checkpoint_seq: int | None


def iter_records(batch_size: int = 2000) -> Iterator[DecisionRecord]:
    """All records in chain order, fetched in batches (memory stays flat for long chains)."""
    return DecisionRecord.objects.order_by("seq").iterator(chunk_size=batch_size)


def _count(checkpoints: int) -> str:
    return f"{checkpoints} signed checkpoint exists" if checkpoints == 1 else f"{checkpoints} signed checkpoints exist"


def _describe(checkpoint: Checkpoint) -> str:
    return f"checkpoint #{checkpoint.number} (signed at {checkpoint.signed_at})"


def _signature_problem(record: DecisionRecord, verify: SignatureVerifier) -> str:
    try:
        signature = base64.b64decode(record.signature or "", validate=True)
    except (binascii.Error, ValueError):
        return "its signature is not base64 (the record was altered)"
    valid = verify(record.key_id or "", record_signing_message(record.hash), signature)
    if valid is None:
        return f"signed by key {record.key_id}, which is neither the current audit key nor a retired one"
    if not valid:
        return "its signature does not match its hash (the record was altered and its hash recomputed)"
    return ""


class _Walk:
    """One pass over the records in chain order, checking links, hashes, signatures and checkpoints."""

    def __init__(self, checkpoints: CheckpointSet, verify: SignatureVerifier, *, skip_signatures_to: int) -> None:
        self.verify = verify
        self.anchors: dict[int, list[Checkpoint]] = {}
        for checkpoint in checkpoints.checkpoints:
            self.anchors.setdefault(checkpoint.seq, []).append(checkpoint)
        self.latest = max(checkpoints.checkpoints, key=lambda c: (c.seq, c.number), default=None)
        self.covered_to = self.latest.seq if self.latest else 0
        self.skip_signatures_to = skip_signatures_to
        self.unsigned_legacy = 0

    def problem(self, record: DecisionRecord, expected_seq: int, expected_prev: str | None) -> str:
        if record.seq != expected_seq:
            return f"expected record #{expected_seq}, found #{record.seq} (a record is missing)"
        if expected_prev is not None and record.prev_hash != expected_prev:
            return "prev_hash does not match the hash of the record before it"
        if record_hash(record) != record.hash:
            return "content does not match its hash (the record was altered)"
        if record.signature:
            if record.seq > self.skip_signatures_to:
                signature_problem = _signature_problem(record, self.verify)
                if signature_problem:
                    return signature_problem
        elif record.seq <= self.covered_to:
            # Unsigned, but its hash is pinned by a signed checkpoint through the chain (records from before
            # signing at append time, or a signature stripped from a record whose content is still pinned).
            self.unsigned_legacy += 1
        else:
            return "carries no signature and no signed checkpoint covers it (it was written outside the application)"
        for checkpoint in self.anchors.get(record.seq, ()):
            if checkpoint.head_hash != record.hash:
                return (
                    f"does not match the signed {_describe(checkpoint)}: the checkpoint says hash "
                    f"{checkpoint.head_hash}, the record has {record.hash} (the chain was rewritten)"
                )
        return ""


def chain_verify(*, from_latest_checkpoint: bool = False) -> ChainVerdict:
    """Walk the chain and name the first record whose link, content or signature was altered, and any records
    missing against the signed checkpoints (deleted tail, truncated table); `from_latest_checkpoint` walks only
    from the newest signed checkpoint on (what a new checkpoint needs; the full walk also names older damage)."""
    trust = _installed_trust()
    checkpoint_set = trust.checkpoints()
    walk_start = 1
    latest = max(checkpoint_set.checkpoints, key=lambda c: (c.seq, c.number), default=None)
    if from_latest_checkpoint and latest is not None:
        walk_start = latest.seq
    walk = _Walk(
        checkpoint_set,
        trust.verifier(),
        skip_signatures_to=latest.seq if from_latest_checkpoint and latest is not None else 0,
    )
    summary: _CheckpointSummary = {
        "checkpoints": len(checkpoint_set.checkpoints),
        "checkpoint_seq": latest.seq if latest else None,
    }

    def broken(length: int, seq: int | None, problem: str, head: str) -> ChainVerdict:
        where = f"record #{seq}: {problem}" if seq is not None else problem
        return ChainVerdict(
            length,
            False,
            seq,
            problem,
            head,
            unsigned_legacy=walk.unsigned_legacy,
            problems=(where, *checkpoint_set.problems),
            **summary,
        )

    expected_prev: str | None = GENESIS_HASH if walk_start == 1 else None
    expected_seq = walk_start
    head_hash = GENESIS_HASH
    count = walk_start - 1
    with transaction.atomic():
        records = DecisionRecord.objects.filter(seq__gte=walk_start).order_by("seq").iterator(chunk_size=2000)
        for record in records:
            count += 1
            problem = walk.problem(record, expected_seq, expected_prev)
            if problem:
                return broken(count, record.seq, problem, head_hash)
            head_hash = expected_prev = record.hash
            expected_seq += 1
        head_seq = expected_seq - 1
        if walk_start > 1 and head_seq < walk_start:
            head_seq = DecisionRecord.objects.order_by("-seq").values_list("seq", flat=True).first() or 0
    if latest is not None and head_seq < latest.seq:
        said = f"says the head was #{latest.seq} with hash {latest.head_hash}"
        if head_seq == 0:
            problem = (
                f"the record table is empty but {_count(len(checkpoint_set.checkpoints))}; the latest, "
                f"{_describe(latest)}, {said}: the records were deleted or the table truncated"
            )
        else:
            problem = f"the chain ends at #{head_seq} but {_describe(latest)} {said}: records were deleted"
        return broken(head_seq, None, problem, head_hash)
    if checkpoint_set.problems:
        return broken(head_seq, None, checkpoint_set.problems[0], head_hash)
    return ChainVerdict(
        head_seq, True, head_hash=head_hash, unsigned_legacy=walk.unsigned_legacy, problems=(), **summary
    )
