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
(0): every range is admitted by the app.

Renewal without a stampede: the last REFRESH_SECONDS of a reuse are given as `stale-while-revalidate` (Cache-Control
`max-age` = the fresh part, the same in `X-Accel-Expires`); nginx (`proxy_cache_background_update`) then serves
the ranges of that last second from the vouch it has while one request asks the app again in the background, instead
of every range in flight missing at once and waiting on the app. The two parts add up to the reuse above, so nginx
serves no yes later than before (nginx also reuses a yes within that window if the app cannot be reached). The
renewal must yield a longer reuse: a vouch whose download pass (or rules verdict) would leave REFRESH_SECONDS or
less is decided anew from the database (identity, token, rules), not from the pass.

Only requests carrying the vouch header with the proxy secret are answered (nginx's internal location adds it);
anything else gets a plain 404 and records nothing.
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


# The last seconds of a reuse, during which nginx serves its vouch while it renews it in the background.
REFRESH_SECONDS = 1


def _answer(status: int, *, reuse_seconds: int = 0) -> HttpResponse:
    response = HttpResponse(status=status)
    fresh, stale = reuse_split(reuse_seconds)
    if fresh:
        # Before X-Accel-Expires: nginx before 1.23 skips a Cache-Control (stale-while-revalidate too) read after an
        # X-Accel-Expires; in this order 1.22 was seen serving the last second stale while renewing.
        response["Cache-Control"] = f"max-age={fresh}, stale-while-revalidate={stale}"
    response["X-Accel-Expires"] = str(fresh)  # 0: nginx stores nothing
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


def reuse_split(seconds: int) -> tuple[int, int]:
    """(fresh, stale) of a reuse of `seconds`: nginx serves the vouch fresh for the first part and, while renewing
    it, for the second (stale-while-revalidate); both together never exceed `seconds`. A reuse of one second (or
    none) is all fresh."""
    stale = REFRESH_SECONDS if seconds > REFRESH_SECONDS else 0
    return seconds - stale, stale


def _renewing(*, until: float, now: float) -> bool:
    """Whether a vouch reused until `until` is at its renewal (nginx is asking in its last REFRESH_SECONDS) and a
    fresh rules verdict would give a longer reuse than what is left of it."""
    left = reuse_seconds(until=until, now=now)
    return left <= REFRESH_SECONDS < services.download_recheck_seconds() - 1


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
    now = now_seconds()
    granted = services.download_pass_get(presented=presented, deployment_id=deployment_id, sha256=sha256)
    if granted is not None and _renewing(until=granted.until, now=now):
        granted = None  # renewed from the database below: the identity, then a fresh rules verdict
    device = granted.device if granted is not None else identity_devices(presented).select_related("region").first()
    if device is None:
        return decline
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
        if _renewing(until=verdict.decided_at + services.download_recheck_seconds(), now=now):
            verdict = services.device_download_allowed(
                device=device, deployment_id=grant.deployment_id, sha256=sha256, fresh=True
            )
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
    # The clock as the answer leaves (the checks above may have crossed a second): nginx stores it at that second.
    seconds = 0 if limited else reuse_seconds(until=min(until, grant.expires_at), now=now_seconds())
    return _answer(200, reuse_seconds=seconds)
