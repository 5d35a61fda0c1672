"""Device attestation on the server: nonces and the rules evidence must meet (what the device edge enforces).

Every check-in answer over a device certificate carries a fresh nonce: `<device id>.<issued, µs>.<random>.<mac>`,
an HMAC (the key is the caller's: devices.edge.attestation derives it from the download-token key) over the device
and the issue time, so issuing one costs no database work and a nonce cannot be made up or moved to another device.
It is fresh for OTA_ATTESTATION_NONCE_SECONDS and used once: consuming it is a conditional UPDATE of the device's
`attested_nonce_us` (only a nonce issued after the last consumed one passes), one statement that also reads what
the server expects (devices.edge.attestation). The evidence (devices.agent.attestation: nonce, boot measurements,
firmware lineage, signed with the device key) must then meet `evidence_mismatch`:

- every image in the lineage after the first (the factory image) is one this server delivered to the device
  (the release of one of its deployments past `pending`, or its installed release);
- the image of the device's latest succeeded deployment (what the server believes it runs) is in the lineage;
- the booted image is the last committed one, or one the server delivered (an image on trial).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import Any

from django.conf import settings

from devices.agent.attestation import BOOTED_IMAGE, MAX_LINEAGE

DEFAULT_NONCE_SECONDS = 900
_CONTEXT = b"ota-attestation-nonce-v1"
NONCE_RE = re.compile(r"\A(\d{1,18})\.(\d{1,20})\.([0-9a-f]{16})\.([A-Za-z0-9_-]{43})\Z")
SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")


@dataclass(frozen=True)
class Nonce:
    """A nonce this server issued: for which device, when (µs since the epoch)."""

    device_id: int
    issued_us: int


class NonceRefused(Exception):
    """A nonce that is not one of ours for this device (`forged`) or too old to use (`stale`)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def nonce_seconds() -> int:
    """How long a nonce may be used (OTA_ATTESTATION_NONCE_SECONDS)."""
    return max(1, int(getattr(settings, "OTA_ATTESTATION_NONCE_SECONDS", DEFAULT_NONCE_SECONDS)))


def _mac(key: bytes, device_id: int, issued_us: int, salt: str) -> str:
    message = b"|".join([_CONTEXT, b"%d" % device_id, b"%d" % issued_us, salt.encode()])
    return base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()).rstrip(b"=").decode()


def nonce_issue(*, key: bytes, device_id: int, now: float) -> str:
    """A fresh nonce for this device (no database work)."""
    issued_us = int(now * 1_000_000)
    salt = secrets.token_hex(8)
    return f"{device_id}.{issued_us}.{salt}.{_mac(key, device_id, issued_us, salt)}"


def nonce_verify(value: str, *, key: bytes, device_id: int, now: float) -> Nonce:
    """The nonce if this server issued it to this device and it is still fresh; NonceRefused otherwise.

    Single use is not decided here: the caller consumes it with the device's conditional UPDATE."""
    match = NONCE_RE.match(value)
    if match is None:
        raise NonceRefused("forged", "The attestation nonce is malformed.")
    owner, issued_us, salt, mac = int(match[1]), int(match[2]), match[3], match[4]
    if owner != device_id or not hmac.compare_digest(mac, _mac(key, owner, issued_us, salt)):
        raise NonceRefused("forged", "The attestation nonce was not issued to this device by this server.")
    age = now - issued_us / 1_000_000
    if age > nonce_seconds() or age < -60:
        raise NonceRefused("stale", f"The attestation nonce is {int(age)} s old; a fresh one is in this answer.")
    return Nonce(owner, issued_us)


@dataclass(frozen=True)
class ExpectedImages:
    """What the server knows the device was given and installed, as image sha256s."""

    delivered: frozenset[str]  # the releases of its deployments past pending, and its installed release
    current: str | None  # the release of its latest succeeded deployment: what the server believes it runs


def evidence_shape_errors(evidence: Any) -> dict[str, list[str]]:
    """Field errors of an `attestation` object that cannot be evidence at all (sizes and formats; {} when fine)."""
    if not isinstance(evidence, dict):
        return {"attestation": ["Must be an object."]}
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(evidence) - {"nonce", "measurements", "lineage", "signature"})
    if unknown:
        errors.update({f"attestation.{name}"[:64]: ["Unknown field."] for name in unknown[:10]})
    nonce, signature = evidence.get("nonce"), evidence.get("signature")
    if not isinstance(nonce, str) or not 0 < len(nonce) <= 200 or not nonce.isascii():
        errors["attestation.nonce"] = ["A nonce from the previous check-in's answer is required."]
    if not isinstance(signature, str) or not 0 < len(signature) <= 200 or not signature.isascii():
        errors["attestation.signature"] = ["A base64 signature is required."]
    measurements = evidence.get("measurements")
    if (
        not isinstance(measurements, dict)
        or set(measurements) != {BOOTED_IMAGE}
        or not all(isinstance(v, str) and SHA256_RE.match(v) for v in measurements.values())
    ):
        errors["attestation.measurements"] = [f"Exactly {BOOTED_IMAGE}, a lowercase sha256 hex."]
    lineage = evidence.get("lineage")
    if (
        not isinstance(lineage, list)
        or not 0 < len(lineage) <= MAX_LINEAGE
        or not all(isinstance(v, str) and SHA256_RE.match(v) for v in lineage)
    ):
        errors["attestation.lineage"] = [f"1 to {MAX_LINEAGE} lowercase sha256 hex values, oldest first."]
    return errors


def evidence_mismatch(evidence: dict[str, Any], expected: ExpectedImages) -> str | None:
    """Why the (signed, fresh) evidence does not match what the server expects; None when it does."""
    lineage: list[str] = evidence["lineage"]
    foreign = [image for image in lineage[1:] if image not in expected.delivered]
    if foreign:
        return f"The firmware lineage names {len(foreign)} image(s) this server never delivered to the device."
    if expected.current is not None and expected.current not in lineage:
        return "The firmware lineage lacks the image the device last confirmed installing."
    booted = evidence["measurements"][BOOTED_IMAGE]
    if booted != lineage[-1] and booted not in expected.delivered:
        return "The boot measurement names an image that is neither the last committed one nor one delivered."
    return None
