"""Every write to the key registry: create, import a public key, rotate, revoke; each one a decision record.

Rules: only security officers manage keys; one active key per role (checked under a per-role lock, backed by the
constraint); a key id is registered once, so no key serves two roles; offline roles (root, director root) are never
generated on the server's token; the audit-checkpoint key is the decision record's own (approvals.audit.keys), so
its creation and rotation go through that module, which sits in a room below this one.
"""

from __future__ import annotations

import hashlib

from django.contrib.auth.models import User
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from approvals.audit.checkpoints import audit_key_rotate
from approvals.audit.choices import SecurityEventKind
from approvals.audit.keys import audit_key_ensure
from approvals.audit.records import record_decision
from approvals.audit.security import security_event
from devices.firmware.keys.choices import KEY_TRANSITIONS, KeyLocation, KeyState
from devices.firmware.keys.models import SigningKey
from devices.firmware.repository.selectors import image_repository_initialised
from ota_project.errors import Conflict, DomainError, InvalidInput, NotPermitted
from ota_project.hsm.public import CLASSICAL_ALGORITHMS, KeyAlgorithm, public_key_load, public_key_pem, tuf_key_id
from ota_project.hsm.roles import ML_DSA_ROLES, OFFLINE_ROLES, KeyRole
from ota_project.hsm.token import (
    TokenConfig,
    TokenKey,
    offline_token,
    role_label,
    token_key_destroy,
    token_key_generate,
    token_keys,
    token_sign,
)
from ota_project.roles import Role, has_role

SOURCE = "keys"
# Online keys of the image repository: signing with them depends on the published root naming them.
REPOSITORY_ONLINE_ROLES = frozenset(
    {
        KeyRole.TARGETS_RELEASE,
        KeyRole.TARGETS_SECURITY_OFFICER,
        KeyRole.SNAPSHOT,
        KeyRole.TIMESTAMP,
        KeyRole.TARGETS_ML_DSA,
        KeyRole.SNAPSHOT_ML_DSA,
        KeyRole.TIMESTAMP_ML_DSA,
    }
)


def key_manage_refusal(actor: User | None) -> DomainError | None:
    """Why `actor` may not manage signing keys (only security officers may), or None."""
    if not has_role(actor, Role.SECURITY_OFFICER):
        return NotPermitted("Only security officers may manage signing keys.")
    return None


def key_manager_check(actor: User | None, action: str, *, source: str = SOURCE) -> User:
    """The acting security officer; anyone else is refused with an `action_unauthorised` security event."""
    refusal = key_manage_refusal(actor)
    if refusal is not None:
        security_event(
            kind=SecurityEventKind.ACTION_UNAUTHORISED,
            source=source,
            message=refusal.message,
            actor=actor,
            subject=action,
        )
        raise refusal
    assert actor is not None
    return actor


def _role(role: str) -> KeyRole:
    if role not in KeyRole.values:
        raise InvalidInput(
            f"Unknown key role {role!r}.", fields={"role": [f"Choose one of: {', '.join(KeyRole.values)}."]}
        )
    return KeyRole(role)


def _algorithm(algorithm: str, role: KeyRole | None = None) -> KeyAlgorithm:
    """The key's algorithm: the role's default when none is given (ML-DSA-65 for the post-quantum roles, Ed25519
    otherwise); ML-DSA-65 for those roles only, so a hybrid role's threshold can never be met by one key type."""
    if not algorithm:
        return KeyAlgorithm.ML_DSA_65 if role in ML_DSA_ROLES else KeyAlgorithm.ED25519
    if algorithm not in KeyAlgorithm.__members__.values():
        raise InvalidInput(
            f"Unknown algorithm {algorithm!r}.", fields={"algorithm": [f"One of: {', '.join(KeyAlgorithm)}."]}
        )
    _refuse_algorithm_for_role(KeyAlgorithm(algorithm), role)
    return KeyAlgorithm(algorithm)


def _refuse_algorithm_for_role(algorithm: KeyAlgorithm, role: KeyRole | None) -> None:
    if role is None:
        return
    if role in ML_DSA_ROLES and algorithm != KeyAlgorithm.ML_DSA_65:
        raise InvalidInput(
            f"{role} is a post-quantum role: its key is ml-dsa-65.", fields={"algorithm": ["Must be ml-dsa-65."]}
        )
    if role not in ML_DSA_ROLES and algorithm not in CLASSICAL_ALGORITHMS:
        raise InvalidInput(
            f"{role} is a classical role: its key is ed25519 or ecdsa-p256 (ML-DSA keys serve the *-ml-dsa roles).",
            fields={"algorithm": ["Must be ed25519 or ecdsa-p256."]},
        )


def _lock_role(role: str) -> None:
    """Serialise registry writes for one role (the row may not exist yet, so a row lock would not do)."""
    lock_id = int.from_bytes(hashlib.sha256(f"ota-key-role:{role}".encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])


def _refuse_second_active(role: str) -> None:
    active = SigningKey.objects.filter(role=role, state=KeyState.ACTIVE).first()
    if active is not None:
        raise Conflict(
            f"Role {role} already has an active key ({active.key_id}); rotate it instead.",
            fields={"role": ["One active key per role."]},
        )


def _refuse_registered(key_id: str) -> None:
    existing = SigningKey.objects.filter(key_id=key_id).first()
    if existing is not None:
        raise Conflict(
            f"Key {key_id} is already registered for role {existing.role} ({existing.state}); a key serves one role.",
            fields={"public_key": ["This key is already registered."]},
        )


def _snapshot(key: SigningKey) -> dict[str, str]:
    return {"role": key.role, "key_id": key.key_id, "algorithm": key.algorithm, "state": key.state}


def _record(person: User, action: str, key: SigningKey, reason: str, before: dict[str, str] | None = None) -> None:
    """The key action's decision record: the key as it is now, and as it was before when it changed."""
    record_decision(
        actor=person,
        action=action,
        object_type="signing_key",
        object_id=key.key_id,
        before=before,
        after=_snapshot(key),
        reason=reason,
    )


def _insert(*, actor: User, role: str, token_key: TokenKey, location: str) -> SigningKey:
    try:
        with transaction.atomic():
            return SigningKey.objects.create(
                role=role,
                key_id=token_key.key_id,
                algorithm=token_key.algorithm,
                public_key_pem=token_key.public_key_pem,
                location=location,
                token_label=token_key.label if location == KeyLocation.SERVER_TOKEN else "",
                created_by=actor,
                created_at=timezone.now(),
            )
    except IntegrityError as exc:  # the constraints are the last word if a check above was raced
        raise Conflict(f"Key {token_key.key_id} for role {role} conflicts with a registered key.") from exc


def _generate_on_server(role: KeyRole, algorithm: KeyAlgorithm) -> TokenKey:
    if role == KeyRole.AUDIT_CHECKPOINT:
        return audit_key_ensure()  # the decision record's key: adopted when it already signs
    return token_key_generate(label=role_label(role), algorithm=algorithm)


@transaction.atomic
def key_create(*, actor: User | None, role: str, algorithm: str = "", reason: str = "") -> SigningKey:
    """Generate the key of a role in the server's token and register it; refused for offline roles, for a role that
    already has an active key, and for anyone but a security officer. No algorithm: the role's default."""
    person = key_manager_check(actor, "key.create")
    key_role = _role(role)
    key_algorithm = _algorithm(algorithm, key_role)
    if key_role in OFFLINE_ROLES:
        raise InvalidInput(
            f"{key_role} is an offline role: generate it on an offline token (keys create --offline) and register its "
            "public key with keys import-public.",
            fields={"role": ["Offline role."]},
        )
    if key_role == KeyRole.AUDIT_CHECKPOINT and key_algorithm != KeyAlgorithm.ED25519:
        raise InvalidInput(
            "The audit-checkpoint key is Ed25519 (auditors verify Ed25519).",
            fields={"algorithm": ["Must be ed25519 for audit-checkpoint."]},
        )
    _lock_role(key_role)
    _refuse_second_active(key_role)
    token_key = _generate_on_server(key_role, key_algorithm)
    try:
        _refuse_registered(token_key.key_id)
        key = _insert(actor=person, role=key_role, token_key=token_key, location=KeyLocation.SERVER_TOKEN)
    except DomainError:
        if key_role != KeyRole.AUDIT_CHECKPOINT:
            token_key_destroy(key_id=token_key.key_id)
        raise
    _record(person, "key.create", key, reason)
    return key


def key_generate_offline(*, role: str, algorithm: str = "", token: TokenConfig | None = None) -> TokenKey:
    """Generate a role's key on the offline token of a key ceremony (never the server's); nothing is registered here:
    the public half is carried to the server and registered with key_import_public."""
    key_role = _role(role)
    return token_key_generate(
        label=role_label(key_role), algorithm=_algorithm(algorithm, key_role), token=token or offline_token()
    )


def _parse_public_key(text: str) -> tuple[KeyAlgorithm, str]:
    try:
        algorithm, public = public_key_load(text)
    except ValueError as exc:
        raise InvalidInput(str(exc), fields={"public_key": [str(exc)]}) from exc
    return algorithm, public_key_pem(public)


@transaction.atomic
def key_import_public(*, actor: User | None, role: str, public_key: str, reason: str = "") -> SigningKey:
    """Register the public half of a key generated elsewhere (an offline token) as the active key of `role`."""
    person = key_manager_check(actor, "key.import_public")
    key_role = _role(role)
    if key_role == KeyRole.AUDIT_CHECKPOINT:
        raise InvalidInput(
            "The audit-checkpoint key signs on the server: create it there.", fields={"role": ["Server role."]}
        )
    algorithm, pem = _parse_public_key(public_key)
    _refuse_algorithm_for_role(algorithm, key_role)
    token_key = TokenKey(label="", key_id=tuf_key_id(pem), algorithm=algorithm, public_key_pem=pem)
    _lock_role(key_role)
    _refuse_second_active(key_role)
    _refuse_registered(token_key.key_id)
    key = _insert(actor=person, role=key_role, token_key=token_key, location=KeyLocation.OFFLINE)
    _record(person, "key.import_public", key, reason)
    return key


def _active(role: KeyRole) -> SigningKey:
    key = SigningKey.objects.select_for_update().filter(role=role, state=KeyState.ACTIVE).first()
    if key is None:
        raise Conflict(
            f"Role {role} has no active key to rotate; create one first.", fields={"role": ["No active key."]}
        )
    return key


def _leave(key: SigningKey, to: str, actor: User, reason: str = "") -> None:
    """The guarded state change of a key: checks the transition table, one conditional UPDATE."""
    if to not in KEY_TRANSITIONS[key.state]:
        raise Conflict(f"Key {key.key_id} is {key.state}; it cannot become {to}.")
    now = timezone.now()
    fields: dict[str, object] = {"state": to}
    if to == KeyState.RETIRED:
        fields |= {"retired_by": actor, "retired_at": now}
    else:
        fields |= {"revoked_by": actor, "revoked_at": now, "revoke_reason": reason}
    if SigningKey.objects.filter(pk=key.pk, state=key.state).update(**fields) != 1:
        raise Conflict(f"Key {key.key_id} changed meanwhile; try again.")
    for name, value in fields.items():
        setattr(key, name, value)


def key_rotate(*, actor: User | None, role: str, public_key: str = "", reason: str = "") -> SigningKey:
    """Replace the active key of a role: a new key (generated in the server's token, or for an offline role the
    public half of one made in a ceremony) becomes active, the old one is retired and its private half destroyed."""
    person = key_manager_check(actor, "key.rotate")
    key_role = _role(role)
    if key_role == KeyRole.AUDIT_CHECKPOINT:
        return _audit_key_rotate(person, reason)
    if key_role in OFFLINE_ROLES and not public_key:
        raise InvalidInput(
            f"{key_role} is an offline role: give the public key of the new key made on the offline token.",
            fields={"public_key": ["Required for an offline role."]},
        )
    with transaction.atomic():
        _lock_role(key_role)
        old = _active(key_role)
        before = _snapshot(old)
        if public_key:
            algorithm, pem = _parse_public_key(public_key)
            _refuse_algorithm_for_role(algorithm, key_role)
            new_key = TokenKey(label="", key_id=tuf_key_id(pem), algorithm=algorithm, public_key_pem=pem)
            location = KeyLocation.OFFLINE
        else:
            new_key = token_key_generate(label=role_label(key_role), algorithm=KeyAlgorithm(old.algorithm))
            location = KeyLocation.SERVER_TOKEN
        try:  # a rotation that is refused from here on must not leave a second key of the role in the token
            _refuse_registered(new_key.key_id)
            _leave(old, KeyState.RETIRED, person)
            key = _insert(actor=person, role=key_role, token_key=new_key, location=location)
        except DomainError:
            if location == KeyLocation.SERVER_TOKEN:
                token_key_destroy(key_id=new_key.key_id)
            raise
        _record(person, "key.rotate", key, reason, before)
        if old.location == KeyLocation.SERVER_TOKEN and not _kept_until_root_rotation(key_role):
            # A retired key signs nothing more; its public half stays here for what it signed.
            transaction.on_commit(lambda: token_key_destroy(key_id=old.key_id))
    return key


def _kept_until_root_rotation(role: KeyRole) -> bool:
    """A planned rotation of an image repository online key keeps the old private half until a root that no longer
    names it is published (`image_repository rotate-root` destroys it then): the repository keeps signing with the
    key the published root trusts, so it never stops serving in between. A revoked key is destroyed at once."""
    return role in REPOSITORY_ONLINE_ROLES and image_repository_initialised()


def key_retired_destroy(*, keep: set[str]) -> list[str]:
    """Destroy the private halves of the image repository's retired online keys except those in `keep` (the keys
    a newly published root still names); returns the ids, destroyed after the caller's transaction commits."""
    candidates = (
        SigningKey.objects.filter(
            role__in=REPOSITORY_ONLINE_ROLES, state=KeyState.RETIRED, location=KeyLocation.SERVER_TOKEN
        )
        .exclude(key_id__in=keep)
        .values_list("key_id", flat=True)
    )
    in_token = {key.key_id for key in token_keys()}  # those destroyed by an earlier rotation are not listed again
    retired = sorted(key_id for key_id in candidates if key_id in in_token)
    for key_id in retired:
        transaction.on_commit(lambda key_id=key_id: token_key_destroy(key_id=key_id))  # type: ignore[misc]
    return retired


def _audit_key_rotate(person: User, reason: str) -> SigningKey:
    """The audit key's rotation runs in approvals.audit (verify, checkpoint, retire, new key, record, checkpoint);
    this registry's rows change in the transaction that records it."""
    with transaction.atomic():
        _active(KeyRole.AUDIT_CHECKPOINT)  # refuse early when the registry has no active audit key
    registered: list[SigningKey] = []

    def register(new_key: TokenKey) -> None:
        _lock_role(KeyRole.AUDIT_CHECKPOINT)
        _leave(_active(KeyRole.AUDIT_CHECKPOINT), KeyState.RETIRED, person)
        registered.append(
            _insert(actor=person, role=KeyRole.AUDIT_CHECKPOINT, token_key=new_key, location=KeyLocation.SERVER_TOKEN)
        )

    audit_key_rotate(actor=person, reason=reason, in_transaction=register)
    return registered[0]


@transaction.atomic
def key_revoke(*, actor: User | None, key_id: str, reason: str) -> SigningKey:
    """Revoke a key (compromised or withdrawn): it is trusted for nothing from now on and its private half, if on
    the server's token, is destroyed. A reason is required; the audit key is rotated, never revoked (its signatures
    are what the decision record's verification rests on)."""
    person = key_manager_check(actor, "key.revoke")
    if not reason.strip():
        raise InvalidInput("A reason is required to revoke a key.", fields={"reason": ["Required."]})
    key = SigningKey.objects.select_for_update().filter(key_id=key_id).first()
    if key is None:
        raise InvalidInput(f"No registered key {key_id!r}.", fields={"key_id": ["Unknown key."]})
    if key.role == KeyRole.AUDIT_CHECKPOINT:
        raise Conflict(
            "The audit-checkpoint key is not revoked: rotate it (keys rotate --role audit-checkpoint), so what it "
            "signed stays verifiable and nothing new is signed by it."
        )
    before = _snapshot(key)
    _leave(key, KeyState.REVOKED, person, reason)
    _record(person, "key.revoke", key, reason, before)
    if key.location == KeyLocation.SERVER_TOKEN:
        transaction.on_commit(lambda: token_key_destroy(key_id=key.key_id))
    return key


@transaction.atomic
def key_revoke_and_replace(*, actor: User | None, key_id: str, reason: str) -> tuple[SigningKey, SigningKey]:
    """Revoke a compromised online key and give its role a new key in the server's token, in one transaction
    (returns revoked, new). The image repository signs with the new key once a root naming it is signed
    (`image_repository rotate-root`); offline roles get their new key in a ceremony (`keys import-public`)."""
    key_manager_check(actor, "key.revoke")
    registered = SigningKey.objects.filter(key_id=key_id).first()
    if registered is not None and registered.role in OFFLINE_ROLES:
        raise InvalidInput(
            f"{registered.role} is an offline role: revoke it without --replace, make its new key in a ceremony and "
            "register it with import-public.",
            fields={"key_id": ["Offline role: no replacement on the server."]},
        )
    revoked = key_revoke(actor=actor, key_id=key_id, reason=reason)
    replacement = key_create(
        actor=actor, role=revoked.role, algorithm=revoked.algorithm, reason=f"replaces revoked {key_id}: {reason}"
    )
    return revoked, replacement


def role_sign(*, role: str, data: bytes) -> tuple[SigningKey, bytes]:
    """Sign `data` with the active key of `role` in the server's token (how the image repository and the director
    sign); refused when the role has no active key, or its active key lives offline (sign those in a ceremony)."""
    key_role = _role(role)
    key = SigningKey.objects.filter(role=key_role, state=KeyState.ACTIVE).first()
    if key is None:
        raise Conflict(f"Role {key_role} has no active key.", fields={"role": ["No active key."]})
    if key.location != KeyLocation.SERVER_TOKEN:
        raise Conflict(f"The active {key_role} key is on an offline token; it signs only in a key ceremony.")
    return key, token_sign(key_id=key.key_id, data=data)
