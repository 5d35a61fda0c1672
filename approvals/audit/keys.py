"""The server audit key: the Ed25519 key of role audit-checkpoint in the PKCS#11 token (ota_project.hsm).

It signs every decision record, the checkpoints of the chain head and the manifests of exports. The private key is
generated inside the token (sensitive, never extractable) on first use, or by `manage.py keys create --role
audit-checkpoint`, and signatures are C_Sign calls: nothing in this process ever holds private key material.

Key id here is the audit record's own: sha256 (hex) of the raw 32-byte public key, as recorded in every record,
checkpoint and export since before the HSM (the key registry shows the TUF key id of the same key beside it).
Verification needs only public keys: the current one, retired ones kept as PEM in settings.AUDIT_RETIRED_KEYS_DIR,
and the public half of the PEM key that signed before the HSM (settings.AUDIT_SIGNING_KEY_PATH) while it is kept.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import connection

from ota_project.hsm.public import KeyAlgorithm
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import (
    TokenKey,
    TokenKeyNotFound,
    role_label,
    token_key_destroy,
    token_key_generate,
    token_keys,
    token_sign,
)

logger = logging.getLogger(__name__)

AUDIT_SIGNATURE_ALGORITHM = "ed25519"
AUDIT_KEY_ROLE = KeyRole.AUDIT_CHECKPOINT


def _advisory_lock_id(label: str) -> int:
    return int.from_bytes(hashlib.sha256(f"ota-hsm-key:{label}".encode()).digest()[:8], "big", signed=True)


def _ensure_in_token(label: str) -> TokenKey:
    """The token key labelled `label`, generated when there is none. A PostgreSQL advisory lock makes every web,
    worker and command process that finds no key at the same moment agree on one: the first generates, the others
    wait and find it (two keys for one label would be two audit keys)."""
    found = token_keys(label=label)
    if found:
        return found[0]
    lock_id = _advisory_lock_id(label)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s)", [lock_id])
        try:
            found = token_keys(label=label)
            if found:
                return found[0]
            key = token_key_generate(label=label, algorithm=KeyAlgorithm.ED25519)
            logger.warning(
                "generated the audit key in the token (label %s; record key id %s, TUF key id %s)",
                label,
                _key_id_of_pem(key),
                key.key_id,
            )
            return key
        finally:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [lock_id])


# The current token key, remembered per label: looking it up costs more than a signature. A key another process
# retired (destroyed in the token) fails to sign with TokenKeyNotFound, which drops this and looks again.
_current: tuple[str, TokenKey, str] | None = None


def _current_key() -> tuple[TokenKey, str]:
    global _current
    label = role_label(AUDIT_KEY_ROLE)
    if _current is None or _current[0] != label:
        key = _ensure_in_token(label)
        _current = (label, key, _key_id_of_pem(key))
    return _current[1], _current[2]


def _forget_current() -> None:
    global _current
    _current = None


def audit_key_ensure() -> TokenKey:
    """The audit key in the token (generated when missing): what the key registry registers for the role."""
    return _current_key()[0]


def _raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_id_of_pem(key: TokenKey) -> str:
    return public_key_id(key.public_key_pem)


def audit_public_key_pem() -> str:
    """The server audit public key as PEM (SubjectPublicKeyInfo), for auditors to pin."""
    return _current_key()[0].public_key_pem


def audit_key_id() -> str:
    """sha256 (hex) of the raw 32-byte public key: a short, stable name for the server audit key."""
    return _current_key()[1]


def audit_sign(data: bytes) -> bytes:
    """Sign `data` with the server audit key in the token (a 64-byte Ed25519 signature)."""
    return audit_sign_with_key_id(data)[1]


def audit_sign_with_key_id(data: bytes) -> tuple[str, bytes]:
    """(key id, signature) of `data` by the server audit key, the id naming the key that really signed."""
    key, key_id = _current_key()
    try:
        return key_id, token_sign(key_id=key.key_id, data=data)
    except TokenKeyNotFound:
        _forget_current()  # rotated by another process: sign with the key that now holds the role
        key, key_id = _current_key()
        return key_id, token_sign(key_id=key.key_id, data=data)


def load_audit_public_key(public_pem: str | bytes) -> Ed25519PublicKey:
    """Parse a PEM public key and insist on Ed25519; ValueError otherwise."""
    data = public_pem.encode() if isinstance(public_pem, str) else public_pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


def public_key_id(public_pem: str | bytes) -> str:
    """The key id (sha256 of the raw public key) of a PEM public key; ValueError if it is not Ed25519."""
    return hashlib.sha256(_raw_public_bytes(load_audit_public_key(public_pem))).hexdigest()


def audit_verify_signature(public_pem: str | bytes, data: bytes, signature: bytes) -> bool:
    """True when `signature` is a valid Ed25519 signature of `data` by the key in `public_pem`."""
    try:
        load_audit_public_key(public_pem).verify(signature, data)
    except (ValueError, InvalidSignature):
        return False
    return True


def _retired_dir() -> Path:
    return Path(settings.AUDIT_RETIRED_KEYS_DIR)


def _legacy_public_key() -> Ed25519PublicKey | None:
    """The public half of the PEM audit key used before the HSM, while its file is kept (it no longer signs)."""
    path = Path(settings.AUDIT_SIGNING_KEY_PATH)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, OSError) as exc:
        logger.warning("ignoring the pre-HSM audit key %s: %s", path, exc)
        return None
    return key.public_key() if isinstance(key, Ed25519PrivateKey) else None


def audit_retired_public_keys() -> dict[str, str]:
    """Public keys (PEM) of retired audit keys by key id: settings.AUDIT_RETIRED_KEYS_DIR (*.pem) and the pre-HSM
    PEM key while its file is kept."""
    keys: dict[str, str] = {}
    legacy = _legacy_public_key()
    if legacy is not None:
        keys[hashlib.sha256(_raw_public_bytes(legacy)).hexdigest()] = legacy.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()
    directory = _retired_dir()
    if not directory.is_dir():
        return keys
    for pem_file in sorted(directory.glob("*.pem")):
        pem = pem_file.read_text()
        try:
            keys[public_key_id(pem)] = pem
        except ValueError:
            logger.warning("ignoring %s: not an Ed25519 public key", pem_file)
    return keys


def audit_keyring() -> dict[str, Ed25519PublicKey]:
    """Every public key whose signatures verification accepts: the current audit key and the retired ones."""
    keyring = {key_id: load_audit_public_key(pem) for key_id, pem in audit_retired_public_keys().items()}
    _forget_current()  # read the token afresh: another process may have rotated the key since this one cached it
    key, key_id = _current_key()
    keyring[key_id] = load_audit_public_key(key.public_key_pem)
    return keyring


def audit_key_retire_current() -> str:
    """Keep the current key's public half in the retired-keys directory, then destroy the key in the token
    (rotation); the next signature generates a new key. Returns the retired key id."""
    key, retired_id = _current_key()
    directory = _retired_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / f"{retired_id}.pem"
    temp_path = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    with temp_path.open("w") as temp_file:
        temp_file.write(key.public_key_pem)
        temp_file.flush()
        os.fsync(temp_file.fileno())
    os.replace(temp_path, target)
    # Only once the public half is safely kept may the private half go: old signatures must stay verifiable.
    token_key_destroy(key_id=key.key_id)
    _forget_current()
    logger.warning("retired audit key %s (public key kept at %s)", retired_id, target)
    return retired_id
