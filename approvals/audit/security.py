"""Security events: every refusal that could be an attack leaves a counted, bounded trace.

Like `approvals.audit.records`, this module depends only on the audit room's models and Django, so devices, change
control and rollouts can call `security_event` without a cycle. Three properties matter and each has its reason:

- **It survives the refusal's rollback.** Refusals are mostly raised inside `@transaction.atomic`, and the
  exception rolls that transaction back. Outside a transaction the row is written on the default connection in
  autocommit; inside one it goes through a short-lived second connection to the same database in autocommit.
- **It never breaks the request it records.** Database errors are logged to `ota.security` and swallowed.
- **A flood cannot fill the table.** One row per (kind, source, time bucket, key) counts its refusals with an
  atomic upsert; the key is the refused person, else the device, else the address. Past
  OTA_SECURITY_EVENT_KEYS_PER_ADDRESS distinct keys from one address in a bucket, further keys collapse into that
  address's row (random serials from one host); past OTA_SECURITY_EVENT_KEYS_PER_BUCKET keys for one kind and
  source in a bucket, everything else lands in one overflow row (random serials from many hosts). So a bucket
  holds at most KEYS_PER_BUCKET + 1 rows per kind and source, whatever an attacker sends; sources are names in
  code, never input.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.utils import timezone

# Re-exported: callers outside approvals take the kinds from here (the import contracts allow this module).
from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent

security_log = logging.getLogger("ota.security")

OVERFLOW_KEY = "*"
NOBODY_KEY = "-"
DEFAULT_BUCKET_SECONDS = 300
DEFAULT_KEYS_PER_BUCKET = 100
DEFAULT_KEYS_PER_ADDRESS = 5
DEFAULT_RETENTION_DAYS = 180

_KINDS = frozenset(SecurityEventKind.values)
_TABLE = SecurityEvent._meta.db_table
_COLUMNS = (
    "kind",
    "source",
    "bucket",
    "key",
    "actor_id",
    "actor_name",
    "device_serial",
    "address",
    "subject",
    "message",
    "count",
    "first_at",
    "last_at",
)
# True once this request (or this worker context) recorded an event: lets a generic catch-all (the API exception
# handler, the 403 page) stay silent about a refusal the refusing service already recorded with more detail.
_recorded_in_request: ContextVar[bool] = ContextVar("security_event_recorded", default=False)


@dataclass(frozen=True)
class _Event:
    kind: str
    source: str
    key: str
    actor_id: int | None
    actor_name: str
    device_serial: str
    address: str
    subject: str
    message: str
    at: datetime


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def bucket_start(at: datetime) -> datetime:
    """The start of the time bucket `at` falls in (OTA_SECURITY_EVENT_BUCKET_SECONDS wide, aligned to the epoch)."""
    width = max(_setting("OTA_SECURITY_EVENT_BUCKET_SECONDS", DEFAULT_BUCKET_SECONDS), 1)
    seconds = int(at.timestamp()) // width * width
    return datetime.fromtimestamp(seconds, tz=UTC)


def _clip(value: str, limit: int) -> str:
    return (value or "")[:limit]


def _key(actor_id: int | None, device_serial: str, address: str) -> str:
    if actor_id is not None:
        return f"user:{actor_id}"
    if device_serial:
        return f"device:{device_serial}"
    if address:
        return f"address:{address}"
    return NOBODY_KEY


def security_event(
    *,
    kind: str,
    source: str,
    message: str,
    actor: User | None = None,
    device_serial: str = "",
    address: str = "",
    subject: str = "",
) -> None:
    """Count one refusal in its aggregate row; kept even if the caller's transaction rolls back, never raises."""
    if kind not in _KINDS:
        raise ValueError(f"Unknown security event kind {kind!r}; add it to approvals.audit.choices.SecurityEventKind.")
    _recorded_in_request.set(True)
    person = actor if actor is not None and actor.is_authenticated else None
    actor_id = person.pk if person is not None else None
    serial = _clip(device_serial, 64)
    ip = _clip(address, 64)
    event = _Event(
        kind=kind,
        source=_clip(source, 64),
        key=_key(actor_id, serial, ip),
        actor_id=actor_id,
        actor_name=_clip(person.get_username(), 150) if person is not None else "",
        device_serial=serial,
        address=ip,
        subject=_clip(subject, 200),
        message=_clip(message, 500) or kind,
        at=timezone.now(),
    )
    security_log.info(
        "security event %s source=%s key=%s subject=%s: %s", kind, event.source, event.key, event.subject, message
    )
    connection = connections[DEFAULT_DB_ALIAS]
    try:
        if not connection.in_atomic_block:
            _write(connection, event)
        else:
            _write_on_side_connection(event)
    except Exception:
        # Recording must never turn a clean refusal into a 500; this log line is then the only trace.
        security_log.exception("security event %s from %s could not be stored: %s", kind, event.source, event)


def security_event_recorded_in_request() -> bool:
    """True when an event has been recorded since the current request began."""
    return _recorded_in_request.get()


def security_request_begin(**kwargs: Any) -> None:
    """Forget earlier requests' events (connected to request_started)."""
    _recorded_in_request.set(False)


def _write_on_side_connection(event: _Event) -> None:
    """Write through a fresh connection in autocommit: commits now, whatever the caller's transaction does next."""
    side = connections.create_connection(DEFAULT_DB_ALIAS)
    try:
        _write(side, event)
    finally:
        side.close()


def _write(connection: BaseDatabaseWrapper, event: _Event) -> None:
    """Count the event: bump its row if it exists, else apply the caps and upsert (one row per key and bucket)."""
    ops = connection.ops
    table = ops.quote_name(_TABLE)
    count = ops.quote_name("count")
    key = ops.quote_name("key")
    bucket = bucket_start(event.at)
    at = ops.adapt_datetimefield_value(event.at)
    bucket_value = ops.adapt_datetimefield_value(bucket)
    with connection.cursor() as cursor:
        # The flood path: one statement, row-locked by the database, so concurrent bumps never lose a count.
        cursor.execute(
            f"UPDATE {table} SET {count} = {count} + 1, last_at = %s, message = %s, subject = %s "
            f"WHERE kind = %s AND source = %s AND bucket = %s AND {key} = %s",
            [at, event.message, event.subject, event.kind, event.source, bucket_value, event.key],
        )
        if cursor.rowcount:
            return
        event = _capped(cursor, table, key, event, bucket_value)
        values = [
            event.kind,
            event.source,
            bucket_value,
            event.key,
            event.actor_id,
            event.actor_name,
            event.device_serial,
            event.address,
            event.subject,
            event.message,
            1,
            at,
            at,
        ]
        columns = ", ".join(ops.quote_name(c) for c in _COLUMNS)
        placeholders = ", ".join(["%s"] * len(_COLUMNS))
        # Two writers may both miss the UPDATE above; the upsert makes the second one count instead of failing.
        cursor.execute(
            f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) "
            f"ON CONFLICT (kind, source, bucket, {key}) DO UPDATE SET {count} = {table}.{count} + 1, "
            "last_at = excluded.last_at, message = excluded.message, subject = excluded.subject, "
            "device_serial = excluded.device_serial",
            values,
        )


def _capped(cursor: Any, table: str, key: str, event: _Event, bucket: Any) -> _Event:
    """The event with its key collapsed when its address or its kind and source already have too many keys."""
    # Checked without a lock: concurrent first events may overshoot a cap by the number of writers, never more.
    if event.address and event.key != f"address:{event.address}":
        cursor.execute(
            f"SELECT COUNT(*) FROM {table} WHERE kind = %s AND source = %s AND bucket = %s AND address = %s",
            [event.kind, event.source, bucket, event.address],
        )
        if cursor.fetchone()[0] >= _setting("OTA_SECURITY_EVENT_KEYS_PER_ADDRESS", DEFAULT_KEYS_PER_ADDRESS):
            event = replace(event, key=f"address:{event.address}")
    cursor.execute(
        f"SELECT COUNT(*) FROM {table} WHERE kind = %s AND source = %s AND bucket = %s AND {key} <> %s",
        [event.kind, event.source, bucket, event.key],
    )
    if cursor.fetchone()[0] >= _setting("OTA_SECURITY_EVENT_KEYS_PER_BUCKET", DEFAULT_KEYS_PER_BUCKET):
        event = replace(event, key=OVERFLOW_KEY, actor_id=None, actor_name="", address="")
    return event


def security_event_purge(*, now: datetime | None = None) -> int:
    """Delete events whose last refusal is older than OTA_SECURITY_EVENT_RETENTION_DAYS; returns the rows deleted."""
    days = _setting("OTA_SECURITY_EVENT_RETENTION_DAYS", DEFAULT_RETENTION_DAYS)
    cutoff = (now or timezone.now()) - timedelta(days=days)
    deleted, _ = SecurityEvent.objects.filter(last_at__lt=cutoff).delete()
    return deleted
