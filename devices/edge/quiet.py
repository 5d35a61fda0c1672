"""The zero-database idle check-in: per-process memory of devices with nothing to do, invalidated by database epochs.

Two answers are given from here: "nothing to do", and a live offer the locking path already re-sent (see
offer_lookup: every epoch counts for it, `offer` included, and rollouts.offer_resend ends it in time). The one-statement check-in (devices.edge.checkin) fills two
bounded LRU maps when it found the device quiet (no deployment waiting or in flight, the report written, no check-in
budget in its region): the presented identity (certificate fingerprint, or serial + the secret's sha256) -> device id
and region settings, and the device -> a digest of the report it last wrote. A later check-in presenting the same
identity with a report of the same digest (and no attestation evidence) is answered from them; anything else takes
the statement. Entries live OTA_CHECKIN_CACHE_SECONDS at most (then the database vouches again).

Staleness is bounded by two epochs the database maintains (triggers, migrations devices 0010 and rollouts 0012):
`work` (a deployment became an offer candidate or in flight) and `identity` (a credential or certificate changed, a
device left its status or region, a region's poll or budget settings changed). The statement returns them as of its
own snapshot and each entry is tagged with them; the process re-reads them at most every OTA_CHECKIN_EPOCH_SECONDS
(one statement) before answering from memory. A change empties what it affects (the quiet map on `work`, both on
`identity`). So new work, a revocation, a quarantine or a decommissioning reaches a device at most
OTA_CHECKIN_EPOCH_SECONDS after it committed.

last_seen_at of quiet answers is buffered and written in one statement (UPDATE ... FROM unnest, GREATEST so it never
moves backwards) at most every OTA_LAST_SEEN_FLUSH_SECONDS by the next check-in, and at worker exit. A failed flush
keeps its entries for the next one.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection

from devices.credentials import secret_hash
from devices.edge.identity import PresentedIdentity
from devices.models import CheckinEpoch
from devices.services import device_reports_record

logger = logging.getLogger(__name__)

DEFAULT_EPOCH_SECONDS = 1.0
DEFAULT_CACHE_SECONDS = 3600
DEFAULT_CACHE_ENTRIES = 250_000
DEFAULT_FLUSH_SECONDS = 2.0
WORK, IDENTITY, OFFER = "work", "identity", "offer"


@dataclass(frozen=True)
class Epochs:
    work: int
    identity: int
    offer: int = 0

    @property
    def quiet(self) -> tuple[int, int]:
        """The epochs a quiet answer depends on (an offer changing does not make a quiet device's answer stale)."""
        return self.work, self.identity


@dataclass(frozen=True)
class QuietDevice:
    """What the statement established about a quiet device, enough to answer it again."""

    device_id: int
    region_id: int
    region_poll_interval_seconds: int | None
    region_max_checkins_per_window: int | None


@dataclass(frozen=True)
class OfferParts:
    """What an offer's answer says apart from its download URL (whose token is signed afresh for every answer)."""

    device_id: int
    deployment_id: int
    kind: str
    release_version: str
    release_counter: int
    sha256: str
    length: int
    deadline_at: datetime | None
    director: str | None


@dataclass(frozen=True)
class RememberedOffer:
    """A live offer a device holds, re-sent from memory while nothing could have withdrawn or changed it."""

    device: QuietDevice
    parts: OfferParts
    digest: bytes
    epochs: Epochs
    expires: float


@dataclass(frozen=True)
class _Identity:
    device: QuietDevice
    epochs: Epochs
    expires: float


@dataclass(frozen=True)
class _Quiet:
    digest: bytes
    epochs: Epochs
    expires: float


_Entry = TypeVar("_Entry", _Quiet, RememberedOffer)


def _seconds(name: str, default: float) -> float:
    return max(0.0, float(getattr(settings, name, default)))


def identity_key(presented: PresentedIdentity) -> str:
    """The presented proof itself: the fingerprint, or the serial with the secret's sha256 (never the secret)."""
    if presented.by_certificate:
        return f"c:{presented.fingerprint}"
    return f"s:{presented.serial}:{secret_hash(presented.secret)}"


def report_digest(report: dict[str, Any]) -> bytes:
    """A digest of what a report writes (its values, not when): an equal digest means an equal write."""
    text = json.dumps(report, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


class _Memory:
    """The process's maps, epochs and last_seen buffer, behind one lock (gthread workers serve from threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.identities: OrderedDict[str, _Identity] = OrderedDict()
        self.quiet: OrderedDict[int, _Quiet] = OrderedDict()
        self.offers: OrderedDict[int, RememberedOffer] = OrderedDict()
        self.epochs: Epochs | None = None
        self.checked_at = float("-inf")  # monotonic time the epochs were known to hold
        self.seen: dict[int, tuple[datetime, dict[str, Any]]] = {}
        self.flushed_at = time.monotonic()

    def adopt(self, epochs: Epochs, as_of: float, *, authoritative: bool) -> bool:
        """Take epochs read at `as_of`; True when they are the current ones (entries tagged with them may be kept).

        A statement's snapshot may predate what another thread read: older epochs from it are ignored. The dedicated
        re-read is authoritative (any difference, even backwards after a restore, empties the maps)."""
        known = self.epochs
        if known is not None and not authoritative:
            if epochs.work < known.work or epochs.identity < known.identity or epochs.offer < known.offer:
                return False
        if known is None or epochs.identity != known.identity:
            self.identities.clear()
            self.quiet.clear()
        elif epochs.work != known.work:
            self.quiet.clear()
        if known != epochs:
            self.offers.clear()
        self.epochs = epochs
        self.checked_at = max(self.checked_at, as_of) if known == epochs else as_of
        return True

    def reset(self) -> None:
        with self.lock:
            self.identities.clear()
            self.quiet.clear()
            self.offers.clear()
            self.epochs = None
            self.checked_at = float("-inf")
            self.seen.clear()
            self.flushed_at = time.monotonic()


_memory = _Memory()


def quiet_reset() -> None:
    """Forget everything this process remembers (tests; a database restored under a running server)."""
    _memory.reset()


def epochs_read() -> Epochs:
    """The epochs as the database has them now (one statement; a missing row counts 0)."""
    values = dict(CheckinEpoch.objects.values_list("name", "value"))
    return Epochs(work=int(values.get(WORK, 0)), identity=int(values.get(IDENTITY, 0)), offer=int(values.get(OFFER, 0)))


def _fresh() -> bool:
    """Whether the epochs are known within the bound, re-reading them (one statement) when they are not."""
    bound = _seconds("OTA_CHECKIN_EPOCH_SECONDS", DEFAULT_EPOCH_SECONDS)
    with _memory.lock:
        if _memory.epochs is not None and time.monotonic() - _memory.checked_at < bound:
            return True
    started = time.monotonic()
    epochs = epochs_read()
    with _memory.lock:
        return _memory.adopt(epochs, started, authoritative=True)


def _recall(
    presented: PresentedIdentity,
    report: dict[str, Any],
    entries: OrderedDict[int, _Entry],
    counted: Callable[[Epochs], object],
) -> tuple[QuietDevice, _Entry] | None:
    """The device this identity is and its entry in `entries`, if the entry holds for this report; else None.

    What memory alone can refuse is refused first (an unknown identity, another report's digest, an expired entry):
    those check-ins take the statement anyway, so they cost no epoch re-read. Only then are the epochs made fresh
    (one statement, at most once per OTA_CHECKIN_EPOCH_SECONDS), and the entries must still be there and tagged
    with the epochs `counted` picks out of the current ones."""
    key, digest = identity_key(presented), report_digest(report)
    with _memory.lock:
        found = _memory.identities.get(key)
        entry = entries.get(found.device.device_id) if found is not None else None
        if found is None or entry is None or entry.digest != digest or not _live(found, entry):
            return None
    if not _fresh():
        return None
    with _memory.lock:
        known = _memory.epochs
        # The re-read may have emptied the maps, and another thread replaced entries: only the ones checked count.
        if (
            known is None
            or _memory.identities.get(key) is not found
            or entries.get(found.device.device_id) is not entry
        ):
            return None
        if (
            found.epochs.identity != known.identity
            or counted(entry.epochs) != counted(known)
            or not _live(found, entry)
        ):
            return None
        _memory.identities.move_to_end(key)
        entries.move_to_end(found.device.device_id)
        return found.device, entry


def _live(found: _Identity, entry: _Quiet | RememberedOffer) -> bool:
    now = time.monotonic()
    return found.expires > now and entry.expires > now


def quiet_lookup(presented: PresentedIdentity, report: dict[str, Any]) -> QuietDevice | None:
    """The quiet device this identity is, if it has nothing to do and reports what it last wrote; else None.

    At most one statement (the epochs' re-read, at most once per OTA_CHECKIN_EPOCH_SECONDS), usually none; none
    at all when memory alone refuses. The `offer` epoch does not count (an offer changing leaves a quiet answer)."""
    recalled = _recall(presented, report, _memory.quiet, lambda epochs: epochs.quiet)
    return recalled[0] if recalled is not None else None


def quiet_remember(
    presented: PresentedIdentity, device: QuietDevice, report: dict[str, Any], epochs: Epochs, as_of: float
) -> None:
    """Remember a device the statement (started at monotonic `as_of`, `epochs` from its snapshot) found quiet."""
    ttl = _seconds("OTA_CHECKIN_CACHE_SECONDS", DEFAULT_CACHE_SECONDS)
    size = max(0, int(getattr(settings, "OTA_CHECKIN_CACHE_ENTRIES", DEFAULT_CACHE_ENTRIES)))
    if not ttl or not size:
        return
    key, digest, expires = identity_key(presented), report_digest(report), as_of + ttl
    with _memory.lock:
        if not _memory.adopt(epochs, as_of, authoritative=False):
            return
        _memory.identities[key] = _Identity(device, epochs, expires)
        _memory.identities.move_to_end(key)
        _memory.offers.pop(device.device_id, None)
        _memory.quiet[device.device_id] = _Quiet(digest, epochs, expires)
        _memory.quiet.move_to_end(device.device_id)
        while len(_memory.identities) > size:
            _memory.identities.popitem(last=False)
        while len(_memory.quiet) > size:
            _memory.quiet.popitem(last=False)


def offer_lookup(presented: PresentedIdentity, report: dict[str, Any]) -> RememberedOffer | None:
    """The live offer this identity holds, if it reports what it last wrote and no epoch moved since; else None.

    Like quiet_lookup, at most the epochs' re-read. Every epoch counts: `offer` (something that could withdraw or
    change it), `work` (another deployment of the device became a candidate) and `identity` (a quarantine, a
    revocation, a region change)."""
    recalled = _recall(presented, report, _memory.offers, lambda epochs: epochs)
    return recalled[1] if recalled is not None else None


def offer_remember(
    presented: PresentedIdentity,
    device: QuietDevice,
    report: dict[str, Any],
    parts: OfferParts,
    until: datetime,
    epochs: Epochs,
    as_of: float,
) -> None:
    """Remember the live offer the locking path re-sent to a device whose statement (started at monotonic `as_of`,
    `epochs` from its snapshot) found it the device's only deployment under way; never past `until` (wall clock)."""
    ttl = _seconds("OTA_CHECKIN_OFFER_CACHE_SECONDS", DEFAULT_CACHE_SECONDS)
    size = max(0, int(getattr(settings, "OTA_CHECKIN_CACHE_ENTRIES", DEFAULT_CACHE_ENTRIES)))
    # Measured from the statement's start, which came before now: the entry ends before `until`, never after.
    left = (until - datetime.now(tz=until.tzinfo)).total_seconds()
    if not ttl or not size or left <= 0:
        return
    key, digest = identity_key(presented), report_digest(report)
    with _memory.lock:
        if not _memory.adopt(epochs, as_of, authoritative=False):
            return
        _memory.identities[key] = _Identity(device, epochs, as_of + ttl)
        _memory.identities.move_to_end(key)
        _memory.quiet.pop(device.device_id, None)
        _memory.offers[device.device_id] = RememberedOffer(device, parts, digest, epochs, as_of + min(ttl, left))
        _memory.offers.move_to_end(device.device_id)
        while len(_memory.identities) > size:
            _memory.identities.popitem(last=False)
        while len(_memory.offers) > size:
            _memory.offers.popitem(last=False)


def quiet_forget(device_id: int) -> None:
    """The device is not quiet (any more), nor holding the offer remembered: its next check-in takes the statement."""
    with _memory.lock:
        _memory.quiet.pop(device_id, None)
        _memory.offers.pop(device_id, None)


def last_seen_note(device_id: int, at: datetime, report: dict[str, Any]) -> None:
    """Buffer a quiet answer's report and time (written back by the next flush); flush the buffer when it is due."""
    with _memory.lock:
        _newest(device_id, (at, report))
        due = time.monotonic() - _memory.flushed_at >= _seconds("OTA_LAST_SEEN_FLUSH_SECONDS", DEFAULT_FLUSH_SECONDS)
    if due:
        last_seen_flush()


def _newest(device_id: int, seen: tuple[datetime, dict[str, Any]]) -> None:
    previous = _memory.seen.get(device_id)
    if previous is None or seen[0] > previous[0]:
        _memory.seen[device_id] = seen


def last_seen_flush() -> int:
    """Write the buffered check-ins in one statement (devices.services.device_reports_record: last_seen_at never
    backwards, and the report with its time, by the rule of every report); how many devices it named.

    The report is written back too, not only the time: another worker may have stored a different report of the
    device meanwhile, which this one (the device's latest) must replace, as the statement would have done.
    On failure the values go back into the buffer (merged with newer ones) for the next flush; the error is logged,
    not raised: a check-in's answer does not depend on it."""
    with _memory.lock:
        pending, _memory.seen = _memory.seen, {}
        _memory.flushed_at = time.monotonic()
    if not pending:
        return 0
    try:
        device_reports_record(pending)
    except Exception:  # noqa: BLE001 - kept for the next flush; the answers already went out
        logger.warning("last_seen flush of %d devices failed; kept for the next one", len(pending), exc_info=True)
        with _memory.lock:
            for device_id, seen in pending.items():
                _newest(device_id, seen)
        return 0
    return len(pending)


def last_seen_pending() -> int:
    with _memory.lock:
        return len(_memory.seen)


def _flush_at_exit() -> None:
    try:
        last_seen_flush()
    finally:
        connection.close()


atexit.register(_flush_at_exit)
