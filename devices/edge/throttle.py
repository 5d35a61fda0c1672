"""Per-region device load budget on Django's cache framework: check-ins per window and concurrent downloads.

Cheap by design: one or two cache round-trips per request and no database query (the region comes with the
device's identity). Works on any configured cache: Redis (atomic counters shared by every web process), the
database cache (PostgreSQL-only deployments; counts are approximate under heavy concurrency, which is enough to
shape load), or local memory (one process: the embedded `make run`). The cache alias is OTA_DEVICE_BUDGET_CACHE.
If the cache is unreachable the budget is not enforced (fail open): shaping load must never lock devices out.
"""

from __future__ import annotations

import logging
import math
import time
import zlib
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches
from django.core.cache.backends.redis import RedisCache
from rest_framework.exceptions import Throttled

from devices.models import Device
from devices.selectors import LoadShaping, region_load_shaping

logger = logging.getLogger(__name__)

DEFAULT_DOWNLOAD_LEASE_SECONDS = 900
DEFAULT_DOWNLOAD_RETRY_SECONDS = 30


class RegionOverBudget(Throttled):
    """429 with Retry-After: the device's region is over its budget; come back later, nothing was recorded."""

    default_code = "region_over_budget"


def _cache() -> BaseCache:
    return caches[getattr(settings, "OTA_DEVICE_BUDGET_CACHE", "default")]


def _spread(serial: str, span: int) -> int:
    # A stable per-device offset, so refused devices come back spread over the next window, not all at once.
    return zlib.crc32(serial.encode()) % max(1, span)


def _incr(cache: BaseCache, key: str, timeout: int) -> int:
    if cache.add(key, 1, timeout):
        return 1
    try:
        return int(cache.incr(key))
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout)
        return 1


def checkin_admit(*, device: Device, now: float | None = None) -> LoadShaping:
    """Count this check-in against its region's window; raise RegionOverBudget (429) when the region is over it."""
    shaping = region_load_shaping(region=device.region)
    limit = shaping.max_checkins_per_window
    if not limit:
        return shaping
    now = time.time() if now is None else now
    window = shaping.window_seconds
    index = math.floor(now / window)
    key = f"ota:budget:checkin:{device.region_id}:{index}"
    try:
        count = _incr(_cache(), key, timeout=window * 2)
    except Exception:  # noqa: BLE001 - any cache failure: fail open, never 500 a device
        logger.warning("device budget cache unavailable; check-in budget not enforced", exc_info=True)
        return shaping
    if count > limit:
        retry_after = math.ceil((index + 1) * window - now) + _spread(device.serial, window)
        raise RegionOverBudget(
            wait=max(1, retry_after),
            detail=f"Region {device.region.code} is over its check-in budget ({limit} per {window} s).",
        )
    return shaping


class DownloadLease:
    """One download slot of a region, held while the image streams; released once when the response closes."""

    def __init__(self, cache: BaseCache, key: str):
        self._cache = cache
        self._key = key
        self._held = True

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        try:
            self._give_back()
        except Exception:  # noqa: BLE001 - expired or unreachable: the slot is free either way
            pass

    def _give_back(self) -> None:
        self._cache.decr(self._key)


# On Redis a slot is one round trip each way (the generic cache API needs three to take one and two to give it
# back, a millisecond or more per range). The same keys and counts as the generic path: Django's Redis cache stores
# integers as plain Redis integers, so INCR and DECR act on what `cache.add`/`cache.incr` would.
_TAKE_SLOT = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
local previous = tonumber(redis.call('GET', KEYS[2]) or '0') or 0
if count + math.max(previous, 0) > tonumber(ARGV[2]) then
  redis.call('DECR', KEYS[1])
  return 0
end
return count
"""
_GIVE_BACK = """
if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('DECR', KEYS[1]) end
return 0
"""


def _redis(cache: BaseCache, key: str) -> Any:
    """The redis-py client Django's Redis cache holds for this key (its `_cache` is that backend's client)."""
    return cache._cache.get_client(key, write=True)  # type: ignore[attr-defined]


class _RedisDownloadLease(DownloadLease):
    """A slot counted by the scripts above (decremented only while its period's key still exists)."""

    def _give_back(self) -> None:
        key = self._cache.make_and_validate_key(self._key)
        _redis(self._cache, key).eval(_GIVE_BACK, 1, key)


def _take_slot(cache: BaseCache, key: str, previous_key: str, *, timeout: int, limit: int) -> DownloadLease | None:
    """A slot of `limit` counted over this period and the previous one; None when they are all taken."""
    if isinstance(cache, RedisCache):
        made, made_previous = cache.make_and_validate_key(key), cache.make_and_validate_key(previous_key)
        taken = int(_redis(cache, made).eval(_TAKE_SLOT, 2, made, made_previous, timeout, limit))
        return _RedisDownloadLease(cache, key) if taken else None
    count = _incr(cache, key, timeout=timeout)
    previous = max(0, int(cache.get(previous_key) or 0))
    if count + previous > limit:
        DownloadLease(cache, key).release()
        return None
    return DownloadLease(cache, key)


def download_acquire(*, device: Device, now: float | None = None) -> DownloadLease | None:
    """Take one of the region's concurrent-download slots, or raise RegionOverBudget (429); None when unlimited.

    Slots are counted per lease period (OTA_DEVICE_DOWNLOAD_LEASE_SECONDS): a slot counts in its period and the
    next, so a slot lost with a crashed process frees itself after at most two periods.
    """
    shaping = region_load_shaping(region=device.region)
    limit = shaping.max_concurrent_downloads
    if not limit:
        return None
    lease = max(1, int(getattr(settings, "OTA_DEVICE_DOWNLOAD_LEASE_SECONDS", DEFAULT_DOWNLOAD_LEASE_SECONDS)))
    now = time.time() if now is None else now
    epoch = math.floor(now / lease)
    key = f"ota:budget:downloads:{device.region_id}:{epoch}"
    previous_key = f"ota:budget:downloads:{device.region_id}:{epoch - 1}"
    try:
        taken = _take_slot(_cache(), key, previous_key, timeout=lease * 2 + 60, limit=limit)
    except Exception:  # noqa: BLE001 - fail open
        logger.warning("device budget cache unavailable; download budget not enforced", exc_info=True)
        return None
    if taken is None:
        retry = int(getattr(settings, "OTA_DEVICE_DOWNLOAD_RETRY_SECONDS", DEFAULT_DOWNLOAD_RETRY_SECONDS))
        raise RegionOverBudget(
            wait=max(1, retry + _spread(device.serial, retry)),
            detail=f"Region {device.region.code} has {limit} downloads running, its limit.",
        )
    return taken
