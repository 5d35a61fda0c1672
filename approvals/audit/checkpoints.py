"""Signed checkpoints of the decision record's head, kept in an append-only JSONL file outside the database.

Whoever owns the record table can rewrite it, recompute every hash and delete or truncate rows; they cannot sign.
Each checkpoint says "the chain head was record #seq with this hash" and carries an Ed25519 signature by the audit
key (role audit-checkpoint in the PKCS#11 token, approvals.audit.keys; never in the database). Verification (approvals.audit.records.chain_verify) trusts
only checkpoints whose signature verifies with a known key (current or retired), so a shortened, emptied or
recomputed chain no longer matches what was signed.

One line per checkpoint, canonical JSON:
  {"head_hash", "key_id", "number", "prev", "seq", "sig", "signed_at", "v"}
`number` counts from 1, `prev` is the sha256 of the previous line (64 zeros for the first), `sig` is base64 Ed25519
over CHECKPOINT_SIGNATURE_CONTEXT + the canonical JSON of every other field. A removed or reordered line breaks the
numbering or the `prev` link of the next one.

A checkpoint is only ever written after the chain verified against the earlier ones, so tampering is never signed.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from approvals.audit.keys import (
    audit_key_ensure,
    audit_key_id,
    audit_key_retire_current,
    audit_keyring,
    audit_sign_with_key_id,
    public_key_id,
)
from approvals.audit.models import DecisionRecord
from approvals.audit.records import (
    GENESIS_HASH,
    ChainVerdict,
    Checkpoint,
    CheckpointSet,
    SignatureVerifier,
    canonical_json,
    chain_verify,
    record_decision,
)
from ota_project.errors import Conflict
from ota_project.hsm.token import TokenKey

logger = logging.getLogger(__name__)
security_log = logging.getLogger("ota.security")

CHECKPOINT_VERSION = 1
CHECKPOINT_SIGNATURE_CONTEXT = b"ota-audit-checkpoint:v1:"
CHECKPOINT_FIELDS = frozenset({"v", "number", "seq", "head_hash", "signed_at", "key_id", "prev", "sig"})
_TAIL_BYTES = 16 * 1024


def checkpoint_log_path() -> Path:
    """Where the checkpoint log lives (settings.AUDIT_CHECKPOINT_LOG_PATH, env OTA_AUDIT_CHECKPOINT_LOG)."""
    return Path(settings.AUDIT_CHECKPOINT_LOG_PATH)


def checkpoint_signing_message(body: Mapping[str, Any]) -> bytes:
    """The bytes a checkpoint's signature covers: the context and the canonical JSON of every field but `sig`."""
    return CHECKPOINT_SIGNATURE_CONTEXT + canonical_json({k: v for k, v in body.items() if k != "sig"}).encode()


def _line_digest(line: str) -> str:
    return hashlib.sha256(line.rstrip("\n").encode()).hexdigest()


@dataclass(frozen=True)
class CheckpointLog:
    """A checkpoint log as read: the checkpoints whose signature verified, the problems found, the last line."""

    checkpoints: tuple[Checkpoint, ...]
    problems: tuple[str, ...]
    line_count: int

    def as_set(self) -> CheckpointSet:
        return CheckpointSet(self.checkpoints, self.problems)


def _is_hex64(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _shape_problem(entry: Any) -> str:
    if not isinstance(entry, dict) or set(entry) != CHECKPOINT_FIELDS:
        return f"is not a checkpoint (it must hold exactly: {', '.join(sorted(CHECKPOINT_FIELDS))})"
    if entry["v"] != CHECKPOINT_VERSION:
        return f"has unsupported version {entry['v']!r}"
    for name in ("number", "seq"):
        if isinstance(entry[name], bool) or not isinstance(entry[name], int) or entry[name] < 1:
            return f"has a {name} that is not a whole number from 1"
    if not all(_is_hex64(entry[name]) for name in ("head_hash", "key_id", "prev")):
        return "has a head_hash, key_id or prev that is not 64 hex digits"
    if not isinstance(entry["signed_at"], str) or not isinstance(entry["sig"], str):
        return "has a signed_at or sig that is not text"
    return ""


def checkpoint_log_parse(lines: Iterable[str], keyring: Mapping[str, Ed25519PublicKey]) -> CheckpointLog:
    """Check every line of a checkpoint log: shape, numbering, link to the line before, key and signature."""
    checkpoints: list[Checkpoint] = []
    problems: list[str] = []
    previous_digest = GENESIS_HASH
    previous_seq = 0
    line_no = 0
    for line_no, line in enumerate(lines, start=1):
        where = f"checkpoint log line {line_no}"
        if not line.endswith("\n"):
            problems.append(f"{where} is incomplete (no end of line): a write was cut short or the log was edited")
        try:
            entry = json.loads(line)
        except ValueError:
            entry = None
        shape = _shape_problem(entry)
        if shape:
            problems.append(f"{where} {shape}")
            previous_digest = _line_digest(line)
            continue
        name = f"checkpoint #{entry['number']}"
        if entry["number"] != line_no:
            problems.append(f"{name} is on line {line_no}: checkpoints were removed or inserted")
        if entry["prev"] != previous_digest:
            problems.append(f"{name} does not link to the line before it: the checkpoint log was edited")
        previous_digest = _line_digest(line)
        key = keyring.get(entry["key_id"])
        if key is None:
            problems.append(
                f"{name} is signed by key {entry['key_id']}, which is neither the current audit key nor a retired one"
            )
            continue
        try:
            key.verify(base64.b64decode(entry["sig"], validate=True), checkpoint_signing_message(entry))
        except (binascii.Error, ValueError, InvalidSignature):
            problems.append(f"{name} (line {line_no}): checkpoint signature invalid (forged or altered)")
            continue
        if entry["seq"] < previous_seq:
            problems.append(f"{name} goes back from #{previous_seq} to #{entry['seq']}: the log was reordered")
        previous_seq = max(previous_seq, entry["seq"])
        checkpoints.append(
            Checkpoint(
                number=entry["number"],
                seq=entry["seq"],
                head_hash=entry["head_hash"],
                signed_at=entry["signed_at"],
                key_id=entry["key_id"],
            )
        )
    return CheckpointLog(tuple(checkpoints), tuple(problems), line_no)


def checkpoint_log_lines() -> list[str]:
    """The raw lines of the checkpoint log ([] when there is none yet)."""
    try:
        with checkpoint_log_path().open(encoding="utf-8", newline="") as log:
            return list(log)
    except FileNotFoundError:
        return []


def checkpoint_log_read() -> CheckpointLog:
    """The checkpoint log on this server, checked against the current and retired audit keys."""
    return checkpoint_log_parse(checkpoint_log_lines(), audit_keyring())


def _last_line(fd: int) -> str:
    size = os.fstat(fd).st_size
    start = max(0, size - _TAIL_BYTES)
    tail = os.pread(fd, size - start, start).decode("utf-8", errors="replace")
    lines = tail.splitlines(keepends=True)
    return lines[-1] if lines else ""


def checkpoint_append(*, seq: int, head_hash: str) -> Checkpoint | None:
    """Sign and append a checkpoint of head #seq; None when the log already holds this head or a later one.

    The caller must have verified the chain up to `seq` (see checkpoint_after_verify): a checkpoint vouches for it.
    """
    path = checkpoint_log_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    created = not path.exists()
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        # The lock serialises writers (web, worker, beat, commands) so numbers and links form one line.
        fcntl.flock(fd, fcntl.LOCK_EX)
        last_line = _last_line(fd)
        number, previous_digest = 1, GENESIS_HASH
        if last_line:
            try:
                last = json.loads(last_line)
                number, last_seq = int(last["number"]) + 1, int(last["seq"])
            except (ValueError, KeyError, TypeError):
                logger.error("the last line of %s is not a checkpoint; not appending", path)
                return None
            if last_seq >= seq:
                return None
            previous_digest = _line_digest(last_line)
        if last_line and not last_line.endswith("\n"):
            logger.error("the last line of %s is incomplete; not appending", path)
            return None
        signed_at = timezone.now().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        body = {
            "v": CHECKPOINT_VERSION,
            "number": number,
            "seq": seq,
            "head_hash": head_hash,
            "signed_at": signed_at,
            "prev": previous_digest,
        }
        body["key_id"] = key_id = audit_key_id()
        signed_by, signature = audit_sign_with_key_id(checkpoint_signing_message(body))
        if signed_by != key_id:
            return None  # the key was rotated in between; the next run signs with the new one
        line = canonical_json({**body, "sig": base64.b64encode(signature).decode()}) + "\n"
        # One write(2) of one line on an O_APPEND descriptor, then fsync: a line is either there whole or not at all.
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return Checkpoint(number=number, seq=seq, head_hash=head_hash, signed_at=signed_at, key_id=key_id)


def checkpoint_after_verify(*, from_latest_checkpoint: bool = False) -> tuple[ChainVerdict, Checkpoint | None]:
    """Verify the chain and, only if it is intact, sign a checkpoint of its head (at every verify and export)."""
    verdict = chain_verify(from_latest_checkpoint=from_latest_checkpoint)
    if not verdict.ok:
        security_log.error("decision record verification failed; no checkpoint signed: %s", "; ".join(verdict.problems))
        return verdict, None
    if verdict.length == 0:
        return verdict, None
    return verdict, checkpoint_append(seq=verdict.length, head_hash=verdict.head_hash)


def _last_log_line() -> str:
    try:
        fd = os.open(checkpoint_log_path(), os.O_RDONLY)
    except FileNotFoundError:
        return ""
    try:
        return _last_line(fd)
    finally:
        os.close(fd)


def checkpoint_if_moved() -> Checkpoint | None:
    """Sign a checkpoint when the head moved since the last one, walking only from that checkpoint (celery beat)."""
    head = DecisionRecord.objects.order_by("-seq").values_list("seq", "hash").first()
    last_line = _last_log_line()
    if head is None and not last_line:
        return None
    if head is not None and last_line:
        try:
            last = json.loads(last_line)
        except ValueError:
            last = None
        if isinstance(last, dict) and (last.get("seq"), last.get("head_hash")) == head:
            return None
    return checkpoint_after_verify(from_latest_checkpoint=True)[1]


class AuditKeyTrust:
    """The record trust of this server: the audit key signs, current and retired keys verify, the log anchors."""

    def sign(self, message: bytes) -> tuple[str, bytes]:
        return audit_sign_with_key_id(message)

    def verifier(self) -> SignatureVerifier:
        keyring = audit_keyring()

        def verify(key_id: str, message: bytes, signature: bytes) -> bool | None:
            key = keyring.get(key_id)
            if key is None:
                return None
            try:
                key.verify(signature, message)
            except InvalidSignature:
                return False
            return True

        return verify

    def checkpoints(self) -> CheckpointSet:
        return checkpoint_log_read().as_set()


KEY_ROTATE_ACTION = "audit.key_rotate"


@dataclass(frozen=True)
class KeyRotation:
    """A finished rotation: the retired and the new key id, and the checkpoints signed by each around it."""

    retired_key_id: str
    new_key_id: str
    last_checkpoint_of_retired_key: Checkpoint | None
    first_checkpoint_of_new_key: Checkpoint | None


def audit_key_rotate(
    *, actor: User | None, reason: str = "", in_transaction: Callable[[TokenKey], None] | None = None
) -> KeyRotation:
    """Retire the audit key (its public half stays known) and start a new one; refused unless the chain verifies,
    so the retired key's last checkpoint vouches for everything it signed, and the rotation is itself recorded.

    `in_transaction(new_key)` runs in the transaction that records the rotation: the key registry
    (devices.firmware.keys, a room above this one) passes its own bookkeeping this way."""
    verdict, before = checkpoint_after_verify()
    if not verdict.ok:
        raise Conflict(f"the decision record does not verify, so the audit key is not rotated: {verdict.problems[0]}")
    last_of_retired = before
    if last_of_retired is None:  # the head had not moved since the last checkpoint
        existing = checkpoint_log_read().checkpoints
        last_of_retired = existing[-1] if existing else None
    retired_key_id = audit_key_retire_current()
    new_key = audit_key_ensure()  # generates the new key in the token
    new_key_id = public_key_id(new_key.public_key_pem)
    with transaction.atomic():
        if in_transaction is not None:
            in_transaction(new_key)
        record_decision(
            actor=actor,
            action=KEY_ROTATE_ACTION,
            object_type="audit_key",
            object_id=new_key_id,
            before={"key_id": retired_key_id},
            after={"key_id": new_key_id, "tuf_key_id": new_key.key_id},
            reason=reason,
            system_actor="audit_key_rotate",
        )
    verdict, first_of_new = checkpoint_after_verify(from_latest_checkpoint=True)
    return KeyRotation(retired_key_id, new_key_id, last_of_retired, first_of_new)
