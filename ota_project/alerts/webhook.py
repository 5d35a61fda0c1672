"""The alert webhook: a JSON POST signed with HMAC-SHA256, one attempt at a time (retries in `services`).

Signature header: `X-OTA-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">` with the webhook secret
(OTA_ALERT_WEBHOOK_SECRET, else a file generated at run time: OTA_ALERT_WEBHOOK_SECRET_FILE). A receiver recomputes
it over the raw body, compares in constant time and refuses a timestamp older than a few minutes (replays).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

from ota_project.files import run_time_secret

SIGNATURE_HEADER = "X-OTA-Signature"
DELIVERY_HEADER = "X-OTA-Delivery"
EVENT_HEADER = "X-OTA-Event"


def webhook_secret() -> bytes:
    """The signing secret: the environment's, else the run-time file's (created 0600 on first use)."""
    return run_time_secret(
        Path(settings.OTA_ALERT_WEBHOOK_SECRET_FILE), os.environ.get("OTA_ALERT_WEBHOOK_SECRET", ""), nbytes=32
    )


def webhook_signature(secret: bytes, timestamp: int, body: bytes) -> str:
    """The header value for `body` sent at `timestamp`."""
    digest = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def webhook_signature_valid(secret: bytes, header: str, body: bytes) -> bool:
    """True when `header` is a valid signature of `body` (what a receiver checks; the tests use it too)."""
    parts = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(parts.get("t", ""))
    except ValueError:
        return False
    return hmac.compare_digest(webhook_signature(secret, timestamp, body), f"t={timestamp},v1={parts.get('v1', '')}")


@dataclass(frozen=True)
class PostResult:
    """What one POST got: the HTTP status (None when no answer) and a short error for the record."""

    status_code: int | None
    error: str = ""

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A webhook answer that redirects is a failure: the signed body goes only to the configured URL."""

    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirects)


def webhook_post(*, url: str, body: bytes, delivery_id: int, timestamp: int, timeout: float) -> PostResult:
    """POST the body once with its signature; never raises for network or HTTP trouble."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "ota-change-control-alerts/1",
            SIGNATURE_HEADER: webhook_signature(webhook_secret(), timestamp, body),
            DELIVERY_HEADER: str(delivery_id),
            EVENT_HEADER: "alert",
        },
    )
    try:
        with _opener.open(request, timeout=timeout) as response:
            return PostResult(response.status)
    except urllib.error.HTTPError as err:
        return PostResult(err.code, f"HTTP {err.code}")
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        return PostResult(None, str(reason)[:300] or type(err).__name__)
