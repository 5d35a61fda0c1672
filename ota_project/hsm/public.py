"""The public side of token keys: algorithms, PEM public keys, TUF key ids and signature checks (no token needed).

Key id: TUF style, the sha256 (hex) of the canonical JSON of the key's TUF form
{"keytype", "scheme", "keyval": {"public"}} as securesystemslib computes it, so the image repository and director
metadata can name a key by the id the registry shows. Ed25519 `public` is the raw key in hex; ECDSA P-256 `public`
is the SubjectPublicKeyInfo PEM.

Signatures: Ed25519 is the raw 64 bytes (scheme "ed25519"). ECDSA P-256 is DER (SEQUENCE of r and s) over the SHA-256
of the message (scheme "ecdsa-sha2-nistp256"), what securesystemslib and `cryptography` expect; the token signs the
digest (SoftHSM has no combined hash-and-sign for ECDSA) and returns raw r||s, which `token` converts to DER.
ML-DSA-65 (TUF key type "ml-dsa", scheme "ml-dsa-65/1", `public` the SubjectPublicKeyInfo PEM) signs TAP 21's
pre-hashed message: b"tuf" + version byte 1 + SHA-512 of the message (`mldsa_message`), as securesystemslib verifies.
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PublicKey

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey | MLDSA65PublicKey


class KeyAlgorithm(StrEnum):
    """Signature algorithms a token key can have; values live in rows and are never renamed."""

    ED25519 = "ed25519"
    ECDSA_P256 = "ecdsa-p256"
    ML_DSA_65 = "ml-dsa-65"


# Classical (pre-quantum) algorithms; ML-DSA-65 is the post-quantum half of a hybrid repository.
CLASSICAL_ALGORITHMS = frozenset({KeyAlgorithm.ED25519, KeyAlgorithm.ECDSA_P256})

# The TUF (securesystemslib) key type and scheme of each algorithm.
TUF_KEY_TYPE = {KeyAlgorithm.ED25519: "ed25519", KeyAlgorithm.ECDSA_P256: "ecdsa", KeyAlgorithm.ML_DSA_65: "ml-dsa"}
TUF_SCHEME = {
    KeyAlgorithm.ED25519: "ed25519",
    KeyAlgorithm.ECDSA_P256: "ecdsa-sha2-nistp256",
    KeyAlgorithm.ML_DSA_65: "ml-dsa-65/1",
}
# TAP 21: an ML-DSA key of scheme version 1 signs b"tuf" + b"\x01" + SHA-512(message).
MLDSA_SCHEME_VERSION = 1


def mldsa_message(data: bytes) -> bytes:
    """What an ML-DSA key signs for `data` in TUF (TAP 21, scheme version 1): b"tuf" + b"\x01" + SHA-512(data)."""
    return b"tuf" + bytes([MLDSA_SCHEME_VERSION]) + hashlib.sha512(data).digest()


def public_key_load(public_key_pem: str | bytes) -> tuple[KeyAlgorithm, PublicKey]:
    """Parse a SubjectPublicKeyInfo PEM and name its algorithm; ValueError for anything but Ed25519, P-256 or
    ML-DSA-65."""
    data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from exc
    if isinstance(key, Ed25519PublicKey):
        return KeyAlgorithm.ED25519, key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return KeyAlgorithm.ECDSA_P256, key
    if isinstance(key, MLDSA65PublicKey):
        return KeyAlgorithm.ML_DSA_65, key
    raise ValueError("not an Ed25519, ECDSA P-256 or ML-DSA-65 public key")


def public_key_pem(key: PublicKey) -> str:
    """The SubjectPublicKeyInfo PEM of a public key."""
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def tuf_public_key(public_key_pem_text: str) -> dict[str, Any]:
    """The key in TUF form: {"keytype", "scheme", "keyval": {"public"}} (what metadata lists under "keys")."""
    algorithm, key = public_key_load(public_key_pem_text)
    if isinstance(key, Ed25519PublicKey):
        public = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw).hex()
    else:
        public = public_key_pem(key)
    return {"keytype": TUF_KEY_TYPE[algorithm], "scheme": TUF_SCHEME[algorithm], "keyval": {"public": public}}


def tuf_key_id(public_key_pem_text: str) -> str:
    """sha256 (hex) of the canonical JSON of the key's TUF form: the key id the registry and metadata use."""
    canonical = json.dumps(tuf_public_key(public_key_pem_text), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def signature_verify(public_key_pem_text: str | bytes, data: bytes, signature: bytes) -> bool:
    """True when `signature` (raw Ed25519, DER ECDSA over SHA-256, or ML-DSA-65 over `mldsa_message`) is valid for
    `data` under the key."""
    try:
        _, key = public_key_load(public_key_pem_text)
        if isinstance(key, Ed25519PublicKey):
            key.verify(signature, data)
        elif isinstance(key, MLDSA65PublicKey):
            key.verify(signature, mldsa_message(data))
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except (ValueError, InvalidSignature):
        return False
    return True
