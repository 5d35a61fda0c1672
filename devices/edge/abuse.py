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

A refusal is 429 with Retry-After (seconds until the bucket has a token again). The swarm counts the whole server:
windows of OTA_DEVICE_SWARM_WINDOW_SECONDS aligned to the epoch (the same in every process); a process's first
refusal of a key in a window inserts the key's row for the window (`LimitedKey`, unique per window and key, so once
for the whole server) and counts the window's rows in the same statement, and only the process whose row was new
records the key's `device_rate_limited` security event. When OTA_DEVICE_SWARM_THRESHOLD distinct keys are over
their limits within one window, that is a swarm: the process whose `SwarmWindow` row for the window is inserted
(unique: no check-then-act race) raises the one `device_swarm` security event and alert (`_swarm_alert`). Requests
within their limits, and further refusals of a key already noted, never touch the database.

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
A rate of 0 turns that limit off. The swarm threshold counts keys over their limits across all processes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import reverse
from django.utils import timezone

from approvals.audit.security import SecurityEventKind, security_event
from devices.edge.identity import (
    FORWARDED_FOR_META,
    MalformedCredential,
    PresentedIdentity,
    from_device_proxy,
    presented_identity,
)
from devices.models import LimitedKey, SwarmWindow
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
    """This process's view of the current swarm window: the keys it already noted (each costs the database once per
    window and process) and whether it knows the window's swarm was declared (by any process)."""

    started: float = -1.0
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
        _window.started, _window.alerted = -1.0, False
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
    """The 429 answer; the first refusal of each key in a swarm window is recorded, and a swarm alerts once.

    `now`: wall-clock epoch seconds (swarm windows are aligned to the epoch, the same in every process)."""
    _note(refused, time.time() if now is None else now)
    retry_after = max(1, math.ceil(refused.retry_after))
    body = error_body("rate_limited", f"Too many requests: retry after {retry_after} s.")
    response = JsonResponse(body, status=429)
    response["Retry-After"] = str(retry_after)
    return response


# The swarm alert's kind (under `security.`: security officers are told as well as operators) and dedup key.
SWARM_ALERT_KIND = "security.device_swarm"
_LIMITED_KEYS = LimitedKey._meta.db_table
# One round trip, on the refusal path only: forget the keys of earlier windows (an index range, empty after the
# window's first refusal), insert the key's row for the window if no process did yet, and count the window's keys as
# they were before (the CTE's row is not visible to the count in the same statement, so the two add up).
_COUNT_KEY = (
    f'WITH purged AS (DELETE FROM {_LIMITED_KEYS} WHERE "window" < %s), '
    f'added AS (INSERT INTO {_LIMITED_KEYS} ("window", "key") VALUES (%s, %s) '
    'ON CONFLICT ("window", "key") DO NOTHING RETURNING 1) '
    f'SELECT (SELECT COUNT(*) FROM added), (SELECT COUNT(*) FROM {_LIMITED_KEYS} WHERE "window" = %s)'
)
SWARM_WINDOWS_KEPT = timedelta(days=7)


@dataclass(frozen=True)
class _Counted:
    """What the database said about a key's first refusal in a window (in this process)."""

    first_on_server: bool  # no other process had recorded the key in this window
    keys: int  # distinct keys over their limits in this window, server-wide, this one included


def _count_key(key: str, window: datetime) -> _Counted | None:
    """Record the key for the window once for the whole server and count the window's keys (one indexed statement,
    in the middleware's autocommit). None: the database failed (the refusal stands and is recorded anyway)."""
    try:
        with connection.cursor() as cursor:
            cursor.execute(_COUNT_KEY, [window, window, key[:200], window])
            added, before = cursor.fetchone()
    except DatabaseError:
        logger.exception("device API limits: the swarm count is unavailable; recording the refusal only")
        return None
    return _Counted(first_on_server=bool(added), keys=int(before) + int(added))


def _note(refused: LimitExceeded, now: float) -> None:
    """Record the key once per window for the whole server; when the server's distinct keys in the window reach the
    threshold, one swarm event and alert for the window, whichever process sees it first (a unique row decides)."""
    window_seconds = max(1, int(_setting("OTA_DEVICE_SWARM_WINDOW_SECONDS")))
    started = float(int(now) // window_seconds * window_seconds)
    with _window_lock:
        if _window.started != started:
            _window.started, _window.alerted = started, False
            _window.keys.clear()
        first = refused.key not in _window.keys
        if first:
            _window.keys.add(refused.key)
        declared = _window.alerted
    if not first:
        return  # the hot path of a flood: memory only
    window = datetime.fromtimestamp(started, tz=UTC)
    # Once the window's swarm is declared nothing more is counted (the table stays bounded by the threshold plus
    # the processes); the key is still recorded, by this process.
    counted = None if declared else _count_key(refused.key, window)
    if counted is None or counted.first_on_server:
        security_event(
            kind=SecurityEventKind.DEVICE_RATE_LIMITED,
            source="device_api.limits",
            message=f"Over its request limit ({refused.key}); refused with 429 for the rest of the burst.",
            device_serial=refused.serial,
            address=refused.address,
            subject=refused.key[:200],
        )
    if counted is not None and counted.keys >= max(1, int(_setting("OTA_DEVICE_SWARM_THRESHOLD"))):
        if _swarm_declare(window=window, keys=counted.keys, window_seconds=window_seconds):
            with _window_lock:
                if _window.started == started:
                    _window.alerted = True


def _swarm_declare(*, window: datetime, keys: int, window_seconds: int) -> bool:
    """The window's one swarm event and alert: only the process whose row for the window is inserted raises them.
    True once the window's swarm is declared (by this process or another); False when that failed."""
    message = f"{keys} credentials or addresses over their device API limits within {window_seconds} s."
    try:
        with transaction.atomic():
            SwarmWindow.objects.filter(window__lt=window - SWARM_WINDOWS_KEPT).delete()
            _, declared = SwarmWindow.objects.get_or_create(
                window=window, defaults={"keys": keys, "declared_at": timezone.now()}
            )
            if declared:
                _swarm_alert(message=message, keys=keys, window_seconds=window_seconds)
    except (DatabaseError, DomainError):
        # The alert and the window's row roll back together: another process (or the next key) declares it again.
        alert_logger.exception("the swarm alert could not be raised")
        return False
    if declared:
        security_event(
            kind=SecurityEventKind.DEVICE_SWARM,
            source="device_api.limits",
            message=message,
            subject=f"swarm:{keys}",
        )
    return True


def _swarm_alert(*, message: str, keys: int, window_seconds: int) -> None:
    """Raise the swarm alert (once per window for the whole server; one live alert however many windows: a recurring
    swarm bumps it). Operators and security officers are told. Runs in the caller's transaction (raises on failure)."""
    alert_logger.error("device API swarm: %s (keys=%s, window=%ss)", message, keys, window_seconds)
    raise_alert(
        kind=SWARM_ALERT_KIND,
        dedup_key=SWARM_ALERT_KIND,
        severity=AlertSeverity.CRITICAL,
        title="Device API swarm: many credentials or addresses over their limits at once",
        summary=(
            f"{message} Each is refused with 429 before authentication or any other work; the security page "
            "lists the keys (device_rate_limited events). A swarm of real devices after an outage backs off by itself; "
            "one of unknown credentials or addresses is an attack: block its sources at the edge."
        ),
        link=reverse("web-audit:security"),
        evidence={"keys_over_limit": keys, "window_seconds": window_seconds},
    )
