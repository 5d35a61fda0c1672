"""The director's root and its per-device targets metadata (python-tuf's Metadata API), keys in the token.

Trust model: the director root (TUF root, signed by the offline `director-root` key in a key ceremony) names the
online `director` key for the `targets` role; the director has no snapshot or timestamp role (they are present in
the root without keys, so nothing can sign them). Its targets are fresh per offer and fetched over the device's
authenticated channel, one device at a time: freshness comes from the short expiry, a version that only grows
(the signing time in milliseconds) and a nonce, not from a timestamp role.

Per-device targets name exactly one image, with the custom fields a vehicle checks against the image repository
and against itself: device serial, hardware id, release counter, the deployment, a fresh nonce.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, TargetFile, Targets
from tuf.api.serialization.json import JSONSerializer

from approvals.audit.choices import SecurityEventKind
from approvals.audit.records import record_decision
from approvals.audit.security import security_event
from devices.firmware.director.models import DirectorRoot
from devices.firmware.keys.selectors import signing_key_active
from devices.firmware.keys.services import key_manager_check
from devices.firmware.repository.models import ImageTarget
from devices.firmware.repository.signers import role_signer, token_key_signer, tuf_key
from ota_project.errors import Conflict, InvalidInput
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import TokenConfig, role_label, token_keys

SOURCE = "director"
# The TUF role of the director's metadata and the registry role that signs it (one key, threshold 1).
DIRECTOR_ROLE_KEYS: dict[str, KeyRole] = {Root.type: KeyRole.DIRECTOR_ROOT, Targets.type: KeyRole.DIRECTOR}
NONCE_BYTES = 16
_COMPACT = JSONSerializer(compact=True)  # per-device metadata travels in check-in answers: no pretty-printing
_PRETTY = JSONSerializer(compact=False)


def director_root_latest() -> DirectorRoot | None:
    """The newest director root (None before `director init`)."""
    return DirectorRoot.objects.order_by("-version").first()


# "No director yet", as this process last read it, and until when (monotonic seconds). Only the negative answer is
# kept: a site without a director re-sends offers without asking the database each time, and a director started
# in another process is seen within this many seconds (at once in the process that started it).
_ABSENT_RECHECK_SECONDS = 5.0
_absent_until = 0.0


def director_initialised() -> bool:
    """True once the director has a root: from then on offers carry director metadata."""
    global _absent_until
    if time.monotonic() < _absent_until:
        return False
    present = DirectorRoot.objects.exists()
    _absent_until = 0.0 if present else time.monotonic() + _ABSENT_RECHECK_SECONDS
    return present


def _forget_absence() -> None:
    global _absent_until
    _absent_until = 0.0


def director_root_draft(*, now: datetime | None = None) -> Metadata[Root]:
    """Director root v1, unsigned: the active director-root key for `root`, the active director key for `targets`
    (threshold 1 each); snapshot and timestamp are named without keys (the director signs neither)."""
    now = now or timezone.now()
    root = Root(
        version=1,
        expires=(now + timedelta(days=settings.DIRECTOR_ROOT_EXPIRY_DAYS)).replace(microsecond=0),
        consistent_snapshot=True,
    )
    for tuf_role, key_role in DIRECTOR_ROLE_KEYS.items():
        key = signing_key_active(key_role)
        if key is None:
            raise Conflict(
                f"Role {key_role} has no active key; the director's root needs one.",
                fields={"role": [f"No active {key_role} key."]},
            )
        root.add_key(tuf_key(key), tuf_role)
    return Metadata(root)


def director_root_sign_offline(root: Metadata[Root], *, token: TokenConfig) -> Metadata[Root]:
    """Sign a director root with the director-root keys it names that `token` holds (the key ceremony, on the
    offline token; no database needed). Refused when the token holds none of them."""
    named = set(root.signed.roles[Root.type].keyids)
    keys = [key for key in token_keys(label=role_label(KeyRole.DIRECTOR_ROOT), token=token) if key.key_id in named]
    if not keys:
        raise Conflict(f"Token {token.token_label!r} holds none of the director root keys: {sorted(named)}.")
    for key in keys:
        root.sign(token_key_signer(key, token), append=True)
    return root


def _lock() -> None:
    lock_id = int.from_bytes(hashlib.sha256(b"ota-director").digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])


def _root_problems(root: Metadata[Root], now: datetime) -> list[str]:
    if not isinstance(root.signed, Root):
        return ["not root metadata"]
    draft = director_root_draft(now=now).signed
    signed = root.signed
    problems: list[str] = []
    if signed.version != 1:
        problems.append(f"version {signed.version}, not 1")
    if signed.is_expired(now):
        problems.append("already expired")
    for role in (Root.type, Targets.type, "snapshot", "timestamp"):
        if (set(signed.roles[role].keyids), signed.roles[role].threshold) != (
            set(draft.roles[role].keyids),
            draft.roles[role].threshold,
        ):
            problems.append(f"{role} keys or threshold differ from the registry's active keys")
    try:
        root.verify_delegate(Root.type, root)
    except Exception as exc:  # python-tuf raises UnsignedMetadataError, and ValueError for malformed signatures
        problems.append(f"not signed by the director root key ({exc})")
    return problems


@transaction.atomic
def director_init(*, actor: User | None, root: Metadata[Root]) -> DirectorRoot:
    """Start the director from its root v1 signed in the key ceremony. Security officers only; refused once the
    director has a root, and for a root that is not the one the registry's keys make (a security event)."""
    key_manager_check(actor, "director.init", source=SOURCE)
    _lock()
    if director_initialised():
        raise Conflict("The director already has a root; rotate it instead of starting again.")
    now = timezone.now()
    problems = _root_problems(root, now)
    if problems:
        message = "Refused director root: " + "; ".join(problems) + "."
        security_event(
            kind=SecurityEventKind.ACTION_FORGED, source=SOURCE, message=message, actor=actor, subject="director root"
        )
        raise InvalidInput(message, fields={"root": problems})
    content = root.to_bytes(_PRETTY)
    _forget_absence()
    transaction.on_commit(_forget_absence)
    stored = DirectorRoot.objects.create(
        version=root.signed.version,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        expires=root.signed.expires,
    )
    record_decision(
        actor=actor,
        action="director.init",
        object_type="director_root",
        object_id=f"{stored.version}.root.json",
        after={
            "root_version": stored.version,
            "root_sha256": stored.sha256,
            "expires": stored.expires.isoformat(),
            "keys": {role: sorted(root.signed.roles[role].keyids) for role in DIRECTOR_ROLE_KEYS},
        },
    )
    return stored


@dataclass(frozen=True)
class DirectorAssignment:
    """What the director tells one device: the image (as the image repository lists it) and who it is for."""

    deployment_id: int
    device_serial: str
    hardware_id: str
    target: ImageTarget


@dataclass(frozen=True)
class DirectorTargets:
    """Signed per-device targets metadata, exactly as served, with its version and expiry."""

    content: bytes
    version: int
    expires: datetime


def director_targets_sign(*, assignment: DirectorAssignment, now: datetime | None = None) -> DirectorTargets:
    """Sign targets metadata for one device naming its one image (hash, length and counter copied from the image
    repository's target), with a fresh nonce, a version that grows with time (milliseconds) and a short expiry;
    checked against the stored director root before it is handed out (a key the root does not name signs nothing)."""
    stored_root = director_root_latest()
    if stored_root is None:
        raise Conflict("The director has no root yet: run `manage.py director init`.")
    now = now or timezone.now()
    target = assignment.target
    custom = {
        "device_serial": assignment.device_serial,
        "hardware_id": assignment.hardware_id,
        "release_counter": target.release_counter,
        "deployment_id": assignment.deployment_id,
        "nonce": secrets.token_hex(NONCE_BYTES),
    }
    targets = Targets(
        version=int(now.timestamp() * 1000),
        expires=(now + timedelta(seconds=settings.DIRECTOR_TARGETS_EXPIRY_SECONDS)).replace(microsecond=0),
        targets={
            target.path: TargetFile(
                length=target.length,
                hashes={"sha256": target.sha256},
                path=target.path,
                unrecognized_fields={"custom": custom},
            )
        },
    )
    metadata = Metadata(targets)
    metadata.sign(role_signer(KeyRole.DIRECTOR))
    root = Metadata[Root].from_bytes(bytes(stored_root.content))
    try:
        root.verify_delegate(Targets.type, metadata)
    except UnsignedMetadataError as exc:
        raise Conflict(
            f"The active director key is not the one director root v{root.signed.version} trusts ({exc}).",
            code="key_not_in_root",
        ) from exc
    return DirectorTargets(content=metadata.to_bytes(_COMPACT), version=targets.version, expires=targets.expires)


def director_targets_expiry(content: bytes) -> datetime:
    """When stored director metadata expires (read from its signed part; the bytes are the server's own)."""
    return Metadata[Targets].from_bytes(content).signed.expires
