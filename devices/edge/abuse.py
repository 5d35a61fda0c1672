"""Abuse and swarm limits on the device API: per credential and per source address, refused before any database work.

Region budgets (devices.edge.throttle) shape a whole region's load; they cannot tell one credential or one address
hammering the API from the region's fleet, so without these limits one bad actor spends its region's budget and
the database's time. These limits run first (devices.edge.middleware, before the short paths, DRF and the
region's admission), on headers only, in process memory (token buckets; no cache or database round trip):

- per credential (the presented certificate's fingerprint, or in development mode the serial), whether or not it
  turns out valid: OTA_DEVICE_RATE_PER_SECOND sustained, OTA_DEVICE_RATE_BURST at once;
- per source address (nginx's X-Forwarded-For when the request carries the proxy secret, else the peer address) for
  requests with a credential: OTA_ADDRESS_RATE_PER_SECOND / OTA_ADDRESS_RATE_BURST (generous: many vehicles share a
  carrier's NAT address);
- per source address for requests with no usable credential (none, malformed, spoofed headers):
  OTA_UNAUTHENTICATED_RATE_PER_SECOND / OTA_UNAUTHENTICATED_RATE_BURST, so an unauthenticated flood is answered 429
  from memory and never reaches authentication, which costs a lookup and a security event per request.

A refusal is 429 with Retry-After (seconds until the bucket has a token again). Each key over its limit is recorded
once per swarm window as a `device_rate_limited` security event, not once per request. When
OTA_DEVICE_SWARM_THRESHOLD distinct keys are over their limits within one OTA_DEVICE_SWARM_WINDOW_SECONDS window,
that is a swarm: one `device_swarm` security event and one alert (`_swarm_alert`) per window.

The configured figures are the whole server's: each of its W web processes (settings.OTA_WEB_WORKERS, which
gunicorn's master sets to the number of workers it forks) keeps buckets of rate/W and burst/W (at least 1), so a
key hammering across all of them gets at most the configured rate and burst in total. Why divide rather than share
the buckets in Redis: these limits exist to refuse floods at almost no cost, before anything else runs; one Redis
round trip per request (measured here: ~140 us for a PING or a one-line script on loopback, against ~1.2 us for the
in-memory bucket and ~320 us for a whole bare Django view) would more than double the cost of every refusal, put a
shared server in front of every device request, and need a policy for when Redis is down (the broker may be
RabbitMQ, with no Redis at all). The price of dividing: a key whose requests all reach one process (one keep-alive
connection; a lightly loaded gthread worker accepts every connection it can) gets rate/W there; the defaults (60 at
once, 1/s) leave a device that polls every few minutes far inside that, and an update's burst of requests too with
a few workers. Each server of several behind a balancer has its own buckets (N servers: up to N times the figures).
A rate of 0 turns that limit off. The swarm threshold counts keys each process saw over its share.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse

from approvals.audit.security import SecurityEventKind, security_event
from devices.edge.identity import (
    FORWARDED_FOR_META,
    MalformedCredential,
    PresentedIdentity,
    from_device_proxy,
    presented_identity,
)
from ota_project.alerts.choices import AlertSeverity
from ota_project.alerts.services import raise_alert
from ota_project.errors import DomainError
from ota_project.exceptions import error_body

logger = logging.getLogger(__name__)
alert_logger = logging.getLogger("ota.alerts")

MAX_TRACKED_KEYS = 200_000  # per limit; the least recently seen are forgotten first (a forgotten key starts full)
DEFAULTS: dict[str, float] = {
    "OTA_DEVICE_RATE_PER_SECOND": 1.0,
    "OTA_DEVICE_RATE_BURST": 60,
    "OTA_ADDRESS_RATE_PER_SECOND": 500.0,
    "OTA_ADDRESS_RATE_BURST": 5000,
    "OTA_UNAUTHENTICATED_RATE_PER_SECOND": 2.0,
    "OTA_UNAUTHENTICATED_RATE_BURST": 20,
    "OTA_DEVICE_SWARM_THRESHOLD": 50,
    "OTA_DEVICE_SWARM_WINDOW_SECONDS": 60,
}


def _setting(name: str) -> float:
    return float(getattr(settings, name, DEFAULTS[name]))


class TokenBuckets:
    """Token buckets by key, in memory, bounded in size (least recently used forgotten first); thread-safe."""

    def __init__(self, max_keys: int = MAX_TRACKED_KEYS):
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, updated at)
        self._lock = threading.Lock()
        self._max_keys = max_keys

    def take(self, key: str, *, rate: float, burst: float, now: float) -> float:
        """0 when a token was taken; otherwise the seconds until one will be there (nothing taken)."""
        with self._lock:
            tokens, updated = self._buckets.pop(key, (burst, now))
            tokens = min(burst, tokens + max(0.0, now - updated) * rate)
            wait = 0.0
            if tokens >= 1:
                tokens -= 1
            else:
                wait = (1 - tokens) / rate
            self._buckets[key] = (tokens, now)
            if len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
            return wait

    def clear(self) -> None:
        with self._lock:
            self._buckets.clear()


@dataclass
class _Window:
    """Keys over their limits in the current swarm window (each recorded once), and whether it alerted."""

    started: float = 0.0
    keys: set[str] = field(default_factory=set)
    alerted: bool = False


_device_buckets = TokenBuckets()
_address_buckets = TokenBuckets()
_stranger_buckets = TokenBuckets()
_window = _Window()
_window_lock = threading.Lock()


def limits_reset() -> None:
    """Forget every bucket and the swarm window (tests; a process starts with none)."""
    for buckets in (_device_buckets, _address_buckets, _stranger_buckets):
        buckets.clear()
    with _window_lock:
        _window.started, _window.alerted = 0.0, False
        _window.keys.clear()


class LimitExceeded(Exception):
    """Over a limit: answer 429 with Retry-After; `key` names what was limited (for the record, never the answer)."""

    def __init__(self, key: str, retry_after: float, *, serial: str = "", address: str = ""):
        super().__init__(key)
        self.key = key
        self.retry_after = retry_after
        self.serial = serial
        self.address = address


def source_address(request: HttpRequest) -> str:
    """The client's address: nginx's X-Forwarded-For when the request carries the proxy secret, else the peer."""
    forwarded = request.META.get(FORWARDED_FOR_META, "")
    if forwarded and from_device_proxy(request):
        return str(forwarded).split(",")[-1].strip()[:64]
    return str(request.META.get("REMOTE_ADDR", "") or "")[:64]


def process_share(rate: float, burst: float) -> tuple[float, float]:
    """This process's share of a whole-server limit: (rate/W, burst/W, at least 1 token), W the web processes."""
    workers = max(1, int(getattr(settings, "OTA_WEB_WORKERS", 1)))
    return rate / workers, max(1.0, burst / workers)


def _take(buckets: TokenBuckets, key: str, rate_name: str, burst_name: str, now: float) -> float:
    rate = _setting(rate_name)
    if rate <= 0:
        return 0.0
    share, burst = process_share(rate, max(1.0, _setting(burst_name)))
    return buckets.take(key, rate=share, burst=burst, now=now)


def limits_check(request: HttpRequest, *, now: float | None = None) -> None:
    """Raise LimitExceeded when the request's credential or source address is over its limit (headers only)."""
    now = time.monotonic() if now is None else now
    address = source_address(request)
    try:
        presented: PresentedIdentity | None = presented_identity(request)
    except MalformedCredential:
        presented = None
    if presented is None:
        wait = _take(
            _stranger_buckets,
            address,
            "OTA_UNAUTHENTICATED_RATE_PER_SECOND",
            "OTA_UNAUTHENTICATED_RATE_BURST",
            now,
        )
        if wait:
            raise LimitExceeded(f"address:{address}", wait, address=address)
        return
    wait = _take(_device_buckets, presented.key, "OTA_DEVICE_RATE_PER_SECOND", "OTA_DEVICE_RATE_BURST", now)
    if wait:
        raise LimitExceeded(f"credential:{presented.key}", wait, serial=presented.serial, address=address)
    wait = _take(_address_buckets, address, "OTA_ADDRESS_RATE_PER_SECOND", "OTA_ADDRESS_RATE_BURST", now)
    if wait:
        raise LimitExceeded(f"address:{address}", wait, address=address)


def limit_refusal(refused: LimitExceeded, *, now: float | None = None) -> HttpResponse:
    """The 429 answer; the first refusal of each key in a swarm window is recorded, and a swarm alerts once."""
    _note(refused, time.monotonic() if now is None else now)
    retry_after = max(1, math.ceil(refused.retry_after))
    body = error_body("rate_limited", f"Too many requests: retry after {retry_after} s.")
    response = JsonResponse(body, status=429)
    response["Retry-After"] = str(retry_after)
    return response


# The swarm alert's kind (under `security.`: security officers are told as well as operators) and dedup key.
SWARM_ALERT_KIND = "security.device_swarm"


def _note(refused: LimitExceeded, now: float) -> None:
    """Record the key once per window; past the threshold of distinct keys, one swarm event and alert."""
    window_seconds = max(1.0, _setting("OTA_DEVICE_SWARM_WINDOW_SECONDS"))
    with _window_lock:
        if now - _window.started >= window_seconds:
            _window.started, _window.alerted = now, False
            _window.keys.clear()
        first = refused.key not in _window.keys
        if first:
            _window.keys.add(refused.key)
        count = len(_window.keys)
        swarm = not _window.alerted and count >= max(1, int(_setting("OTA_DEVICE_SWARM_THRESHOLD")))
        if swarm:
            _window.alerted = True
    if first:
        security_event(
            kind=SecurityEventKind.DEVICE_RATE_LIMITED,
            source="device_api.limits",
            message=f"Over its request limit ({refused.key}); refused with 429 for the rest of the burst.",
            device_serial=refused.serial,
            address=refused.address,
            subject=refused.key[:200],
        )
    if swarm:
        message = f"{count} credentials or addresses over their device API limits within {int(window_seconds)} s."
        security_event(
            kind=SecurityEventKind.DEVICE_SWARM,
            source="device_api.limits",
            message=message,
            subject=f"swarm:{count}",
        )
        _swarm_alert(message=message, keys=count, window_seconds=int(window_seconds))


def _swarm_alert(*, message: str, keys: int, window_seconds: int) -> None:
    """Raise the swarm alert (once per window per process; one live alert however many processes and windows: a
    recurring swarm bumps it). Operators and security officers are told; an alert that cannot be raised is logged,
    the refusals and the security event stand either way."""
    alert_logger.error("device API swarm: %s (keys=%s, window=%ss)", message, keys, window_seconds)
    try:
        with transaction.atomic():
            raise_alert(
                kind=SWARM_ALERT_KIND,
                dedup_key=SWARM_ALERT_KIND,
                severity=AlertSeverity.CRITICAL,
                title="Device API swarm: many credentials or addresses over their limits at once",
                summary=(
                    f"{message} Each is refused with 429 before any database work; the security page lists the "
                    "keys (device_rate_limited events). A swarm of real devices after an outage backs off by itself; "
                    "one of unknown credentials or addresses is an attack: block its sources at the edge."
                ),
                link=reverse("web-audit:security"),
                evidence={"keys_over_limit": keys, "window_seconds": window_seconds},
            )
    except DomainError:
        alert_logger.exception("the swarm alert could not be raised")
