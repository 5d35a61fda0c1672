"""The server audit key: an Ed25519 key that signs the manifests of decision-record exports.

The private key lives in a PEM file (PKCS#8) at settings.AUDIT_SIGNING_KEY_PATH, generated there with mode
0600 on first use and never committed. The interface is deliberately four functions so that moving the key
into a PKCS#11 HSM only changes this module: `audit_sign` becomes a C_Sign call, `audit_public_key_pem` reads
the public object, and nothing outside this file ever holds private key material.
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
from django.core.exceptions import ImproperlyConfigured

logger = logging.getLogger(__name__)

AUDIT_SIGNATURE_ALGORITHM = "ed25519"


def _key_path() -> Path:
    return Path(settings.AUDIT_SIGNING_KEY_PATH)


def _create_key_file(path: Path) -> None:
    """Generate a key and publish it at `path` unless another process already did (first writer wins)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    private_key = Ed25519PrivateKey.generate()
    pem = private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Race safety: the key is written completely to a private temporary file (O_EXCL, 0600) and then
    # hard-linked to its final name. link(2), like O_EXCL, refuses to replace an existing file, so when two
    # processes start at once exactly one key wins and nobody can ever read a half-written PEM.
    temp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as temp_file:
            temp_file.write(pem)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        try:
            os.link(temp_path, path)
        except FileExistsError:
            return  # another process created the key first; use theirs
        logger.warning("generated a new audit signing key at %s (key id %s)", path, _key_id_of(private_key))
    finally:
        temp_path.unlink(missing_ok=True)


# The parsed key, remembered per file identity: every decision record is signed at append time, and parsing the PEM
# costs far more than the signature. A rotated or replaced file has a new identity and is read again.
_loaded_key: tuple[tuple[str, int, int, int], Ed25519PrivateKey, str] | None = None


def _load_private_key() -> Ed25519PrivateKey:
    return _load_key_and_id()[0]


def _load_key_and_id() -> tuple[Ed25519PrivateKey, str]:
    global _loaded_key
    path = _key_path()
    try:
        stat = path.stat()
    except FileNotFoundError:
        _create_key_file(path)
        stat = path.stat()
    identity = (str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if _loaded_key is not None and _loaded_key[0] == identity:
        return _loaded_key[1], _loaded_key[2]
    key = _read_private_key(path)
    _loaded_key = (identity, key, _key_id_of(key))
    return key, _loaded_key[2]


def _read_private_key(path: Path) -> Ed25519PrivateKey:
    pem = path.read_bytes()
    if path.stat().st_mode & 0o077:
        logger.warning("audit signing key %s is readable by group or others; it should be mode 0600", path)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ImproperlyConfigured(f"audit signing key {path} is not an unencrypted PKCS#8 PEM key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured(f"audit signing key {path} is not an Ed25519 key")
    return key


def _raw_public_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _key_id_of(private_key: Ed25519PrivateKey) -> str:
    return hashlib.sha256(_raw_public_bytes(private_key.public_key())).hexdigest()


def audit_public_key_pem() -> str:
    """The server audit public key as PEM (SubjectPublicKeyInfo), for auditors to pin."""
    public_key = _load_private_key().public_key()
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def audit_key_id() -> str:
    """sha256 (hex) of the raw 32-byte public key: a short, stable name for the server audit key."""
    return _load_key_and_id()[1]


def audit_sign(data: bytes) -> bytes:
    """Sign `data` with the server audit key (a 64-byte Ed25519 signature)."""
    return _load_private_key().sign(data)


def audit_sign_with_key_id(data: bytes) -> tuple[str, bytes]:
    """(key id, signature) of `data` by the server audit key, from one load of the key (no rotation in between)."""
    key, key_id = _load_key_and_id()
    return key_id, key.sign(data)


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


def audit_retired_public_keys() -> dict[str, str]:
    """Public keys (PEM) of retired audit keys by key id, read from settings.AUDIT_RETIRED_KEYS_DIR (*.pem)."""
    keys: dict[str, str] = {}
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
    current = _load_private_key().public_key()
    keyring[hashlib.sha256(_raw_public_bytes(current)).hexdigest()] = current
    return keyring


def audit_key_retire_current() -> str:
    """Keep the current key's public half in the retired-keys directory and remove the private key (rotation);
    the next signature generates a new key. Returns the retired key id."""
    retired_id = audit_key_id()
    directory = _retired_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = directory / f"{retired_id}.pem"
    temp_path = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    with temp_path.open("w") as temp_file:
        temp_file.write(audit_public_key_pem())
        temp_file.flush()
        os.fsync(temp_file.fileno())
    os.replace(temp_path, target)
    # Only once the public half is safely kept may the private half go: old signatures must stay verifiable.
    _key_path().unlink()
    logger.warning("retired audit signing key %s (public key kept at %s)", retired_id, target)
    return retired_id
