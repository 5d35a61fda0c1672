"""Short-lived download tokens: the offer's artifact URL carries one, so each range is authorised without a join.

A token names a deployment and the image's length and expiry, signed with HMAC-SHA256 over the device, the sha256
fingerprint of the device certificate it was issued to (empty in the secret-credential development mode), the
deployment, the image's sha256, its length and the expiry. Nothing in it is secret; it cannot be moved to
another device or image, stretched past its expiry, or made up without the server's key. The key is generated at
run time into OTA_DOWNLOAD_TOKEN_KEY_FILE (default `.data/download_token_key`, mode 0600, never committed), so
every web process on the machine shares it; several machines share the file (or the OTA_DOWNLOAD_TOKEN_KEY
environment variable). Rotating the key voids every outstanding token: devices get a fresh one at check-in.

A token presented over another certificate (another device's, or the same device's after a renewal or revocation)
fails the same comparison as a forged one: the caller refuses it and records a security event.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import os
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings

from ota_project.files import run_time_secret

MAX_LIFETIME_SECONDS = 900  # issue 16: at most 15 minutes
TOKEN_RE = re.compile(r"\A(\d{1,18})\.(\d{1,18})\.(\d{1,12})\.([A-Za-z0-9_-]{43})\Z")
_CONTEXT = b"ota-download-token-v2"


@dataclass(frozen=True)
class DownloadGrant:
    """What a valid token allows: this device may fetch ranges of this deployment's image until `expires_at`."""

    deployment_id: int
    length: int
    expires_at: int


class DownloadTokenRefused(Exception):
    """A token that is missing, malformed, forged, foreign or expired; `code` says which (for the event)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


def _key_file() -> Path:
    configured = getattr(settings, "OTA_DOWNLOAD_TOKEN_KEY_FILE", None)  # read per call: every range signs
    return Path(configured) if configured else Path(settings.DATA_DIR) / "download_token_key"


def _key() -> bytes:
    return run_time_secret(_key_file(), os.environ.get("OTA_DOWNLOAD_TOKEN_KEY", ""), nbytes=48)


def derived_key(purpose: bytes) -> bytes:
    """A key for another of the edge's HMACs (attestation nonces), derived from this one: one secret to provision
    and rotate, never the same key for two kinds of message."""
    return _derived(_key(), purpose)


@functools.lru_cache(maxsize=16)
def _derived(key: bytes, purpose: bytes) -> bytes:
    return hmac.new(key, b"ota-derived-key|" + purpose, hashlib.sha256).digest()


def _lifetime_seconds() -> int:
    configured = int(getattr(settings, "OTA_DOWNLOAD_TOKEN_SECONDS", MAX_LIFETIME_SECONDS))
    return max(1, min(configured, MAX_LIFETIME_SECONDS))


def _signature(
    *, device_id: int, certificate: str, deployment_id: int, sha256: str, length: int, expires_at: int
) -> str:
    message = b"|".join(
        [_CONTEXT, str(device_id).encode(), certificate.encode(), str(deployment_id).encode(), sha256.encode()]
        + [b"%d" % length, b"%d" % expires_at]
    )
    digest = hmac.new(_key(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def download_token_issue(
    *,
    device_id: int,
    certificate: str,
    deployment_id: int,
    sha256: str,
    length: int,
    deadline_at: datetime | None,
    now: float,
) -> str:
    """A token for this device (and the certificate it presented) for this deployment's image: valid at most
    15 minutes and never past the deadline."""
    expires_at = int(now) + _lifetime_seconds()
    if deadline_at is not None:
        expires_at = min(expires_at, int(deadline_at.timestamp()))
    signature = _signature(
        device_id=device_id,
        certificate=certificate,
        deployment_id=deployment_id,
        sha256=sha256,
        length=length,
        expires_at=expires_at,
    )
    return f"{deployment_id}.{length}.{expires_at}.{signature}"


def download_token_verify(token: str, *, device_id: int, certificate: str, sha256: str, now: float) -> DownloadGrant:
    """The grant a token carries for this device, certificate and image; DownloadTokenRefused when it does not hold.

    No database: the signature binds the device, its certificate and the image, so a token replayed by another
    device, over another certificate or onto another image fails the same comparison as a forged one."""
    if not token:
        raise DownloadTokenRefused("download_token_required", "A download token is required: use the offer's URL.")
    match = TOKEN_RE.match(token)
    if match is None:
        raise DownloadTokenRefused("download_token_invalid", "The download token is not valid for this request.")
    deployment_id, length, expires_at = (int(match.group(i)) for i in (1, 2, 3))
    expected = _signature(
        device_id=device_id,
        certificate=certificate,
        deployment_id=deployment_id,
        sha256=sha256,
        length=length,
        expires_at=expires_at,
    )
    if not hmac.compare_digest(expected, match.group(4)):
        raise DownloadTokenRefused("download_token_invalid", "The download token is not valid for this request.")
    if now >= expires_at:
        raise DownloadTokenRefused("download_token_expired", "The download token has expired: check in for a new one.")
    return DownloadGrant(deployment_id=deployment_id, length=length, expires_at=expires_at)


def download_token_deployment(token: str) -> int | None:
    """The deployment a well-formed token names, read without checking it (None for a malformed token): only to
    find what to check it against; `download_token_verify` decides."""
    match = TOKEN_RE.match(token)
    return int(match.group(1)) if match else None


def now_seconds() -> float:
    """The clock tokens are issued and checked against (one place, so tests can move it)."""
    return time.time()
