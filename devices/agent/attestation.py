"""Attestation evidence: what the vehicle signs at check-in and how the signature is checked (stdlib + cryptography).

The server's check-in answer carries a fresh nonce (`attestation_nonce`, single use, short life). The next
check-in carries the evidence: that nonce, the boot measurements (`booted_image_sha256`: the sha256 of the image in
the slot the device booted) and the firmware lineage (the sha256 of every image the device committed, oldest
first; the factory image first; the last `MAX_LINEAGE` kept), signed with the device key, the key of its TLS
client certificate. One message format for both sides: the agent signs `evidence_message(...)`, the server
(devices.attestation) verifies the same bytes against the public key of the certificate the device presented.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

CONTEXT = b"ota-attestation-v1"
MAX_LINEAGE = 64
MAX_NONCE_LENGTH = 200
MAX_SIGNATURE_LENGTH = 200  # base64 of a DER ECDSA P-256 signature (at most 72 bytes)
BOOTED_IMAGE = "booted_image_sha256"
MEASUREMENT_NAMES = (BOOTED_IMAGE,)


def evidence_message(nonce: str, measurements: dict[str, str], lineage: list[str]) -> bytes:
    """The exact bytes signed: a context label, the nonce, then measurements and lineage as canonical JSON."""
    body = json.dumps({"lineage": lineage, "measurements": measurements}, sort_keys=True, separators=(",", ":"))
    return b"\n".join([CONTEXT, nonce.encode("ascii"), body.encode("ascii")])


def load_device_key(path: str | os.PathLike[str]) -> ec.EllipticCurvePrivateKey:
    """The device's EC private key (the one its TLS client certificate certifies)."""
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} holds no EC private key")
    return key


def evidence_sign(
    key: ec.EllipticCurvePrivateKey, nonce: str, measurements: dict[str, str], lineage: list[str]
) -> dict[str, Any]:
    """The `attestation` object of a check-in body."""
    signature = key.sign(evidence_message(nonce, measurements, lineage), ec.ECDSA(hashes.SHA256()))
    return {
        "nonce": nonce,
        "measurements": dict(measurements),
        "lineage": list(lineage),
        "signature": base64.b64encode(signature).decode("ascii"),
    }


def evidence_signature_valid(public_key: Any, evidence: dict[str, Any]) -> bool:
    """Whether the evidence's signature is the holder of `public_key`'s over exactly its nonce, measurements and
    lineage (False for a key of another type, a malformed signature or any other message)."""
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    try:
        signature = base64.b64decode(evidence["signature"], validate=True)
        message = evidence_message(evidence["nonce"], evidence["measurements"], evidence["lineage"])
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, KeyError, TypeError, UnicodeEncodeError):
        return False
    return True
