"""The app's answer to nginx's "may I send this artifact's ranges myself, and for how long?" (devices.edge.nginx).

nginx asks (`auth_request`) before it serves `GET /device/v1/artifacts/<sha256>/?token=...` from the store; it
caches a yes for the seconds given in `X-Accel-Expires`, keyed by image, token and the presented identity (the
verified client certificate). The rules are exactly the artifact view's: the identity is accepted (the database's
rule, or a live download pass that rule left), the token verifies for that device, certificate and image, the
deployment's rules allow the download (OTA_DOWNLOAD_RECHECK_SECONDS' verdict), the region has a download slot, and
the stored image has the offered length. Anything else is declined (403) quietly: nginx then hands the very
request to the full artifact path (`ArtifactView`), which refuses it with its envelope and records the security
event, so each refused request is recorded once.

How long a yes may be reused: never past the token's expiry and never past the rules verdict's bound (its decision
time plus OTA_DOWNLOAD_RECHECK_SECONDS), counted in whole seconds as nginx counts them (an entry nginx stores at
second s for n seconds is served until s + n + 1), so a revocation, a halt, a withdrawal or a decommissioning stops
cached ranges within the same bound as the app's own. A region with a concurrent-download limit gets no reuse
(0): every range is admitted by the app. Only requests carrying the vouch header with the proxy secret are
answered (nginx's internal location adds it); anything else gets a plain 404 and records nothing.
"""

from __future__ import annotations

import hmac
import math
import os

from django.http import HttpRequest, HttpResponse

from devices.edge import services
from devices.edge.download_tokens import (
    DownloadTokenRefused,
    download_token_deployment,
    download_token_verify,
    now_seconds,
)
from devices.edge.identity import MalformedCredential, device_proxy_secret, identity_devices, presented_identity
from devices.edge.nginx import VOUCH_HEADER
from devices.edge.throttle import RegionOverBudget, download_acquire
from devices.firmware.storage import artifact_path

_VOUCH_META = "HTTP_" + VOUCH_HEADER.upper().replace("-", "_")


def _from_nginx(request: HttpRequest) -> bool:
    presented = str(request.META.get(_VOUCH_META, "")).encode("latin-1", "replace")
    return bool(presented) and hmac.compare_digest(presented, device_proxy_secret().encode())


def _answer(status: int, *, reuse_seconds: int = 0) -> HttpResponse:
    response = HttpResponse(status=status)
    response["X-Accel-Expires"] = str(reuse_seconds)  # 0: nginx stores nothing
    return response


def _stored_with_length(sha256: str, length: int) -> bool:
    try:
        return os.stat(artifact_path(sha256)).st_size == length
    except (OSError, ValueError):
        return False


def reuse_seconds(*, until: float, now: float) -> int:
    """Whole seconds nginx may reuse a yes so that it never serves one at or after `until` (epoch seconds).

    nginx stores an entry at its whole-second clock s (at most `now`) valid for n seconds and serves it while its
    clock reads at most s + n, i.e. until s + n + 1: n = floor(until) - floor(now) - 1 keeps that within `until`."""
    return max(0, math.floor(until) - math.floor(now) - 1)


def artifact_vouch(request: HttpRequest, sha256: str) -> HttpResponse:
    """200 with `X-Accel-Expires` when nginx may send this request's bytes itself; 403 (decline) otherwise."""
    if request.method not in ("GET", "HEAD") or not _from_nginx(request):
        return HttpResponse(status=404)
    decline = _answer(403)
    try:
        presented = presented_identity(request)
    except MalformedCredential:
        return decline
    token = request.GET.get("token", "")
    deployment_id = download_token_deployment(token)
    if presented is None or deployment_id is None:
        return decline
    granted = services.download_pass_get(presented=presented, deployment_id=deployment_id, sha256=sha256)
    device = granted.device if granted is not None else identity_devices(presented).select_related("region").first()
    if device is None:
        return decline
    now = now_seconds()
    try:
        grant = download_token_verify(
            token, device_id=device.pk, certificate=presented.fingerprint, sha256=sha256, now=now
        )
    except DownloadTokenRefused:
        return decline
    if granted is not None:
        until = granted.until
    else:
        verdict = services.device_download_allowed(device=device, deployment_id=grant.deployment_id, sha256=sha256)
        if not verdict.allowed:
            return decline
        services.download_pass_store(
            presented=presented, device=device, deployment_id=grant.deployment_id, sha256=sha256, verdict=verdict
        )
        until = verdict.decided_at + services.download_recheck_seconds()
    try:
        lease = download_acquire(device=device)
    except RegionOverBudget:
        return decline
    limited = lease is not None
    if lease is not None:
        lease.release()  # nginx's transfer is not counted (README: use limit_conn); the limit is checked per range
    if not _stored_with_length(sha256, grant.length):
        return decline
    seconds = 0 if limited else reuse_seconds(until=min(until, grant.expires_at), now=now)
    return _answer(200, reuse_seconds=seconds)
