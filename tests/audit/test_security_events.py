"""Security events: aggregation into one counted row, caps against floods, survival of rollbacks, purge."""

from __future__ import annotations

import logging
import threading
from datetime import UTC, datetime, timedelta

import pytest
from django.db import OperationalError, connection, connections, transaction

from approvals.audit import security
from approvals.audit.choices import SECURITY_SEVERITY, SecurityEventKind
from approvals.audit.models import SecurityEvent
from approvals.audit.security import OVERFLOW_KEY, bucket_start, security_event, security_event_purge
from approvals.audit.tasks import security_event_purge_task
from ota_project.signals import REFUSAL_API_AUTH_FAILED, REFUSAL_UNAUTHORISED

AUTH = SecurityEventKind.DEVICE_AUTH_FAILED
NOON = datetime(2026, 3, 2, 12, 0, 30, tzinfo=UTC)


@pytest.fixture
def frozen(monkeypatch):
    """Every event at the same instant, so a test never straddles a bucket boundary."""
    monkeypatch.setattr(security.timezone, "now", lambda: NOON)
    return NOON


def _auth_failure(serial: str = "TCU-1", address: str = "203.0.113.9") -> None:
    security_event(
        kind=AUTH,
        source="device_api.auth",
        message="Invalid device credentials.",
        device_serial=serial,
        address=address,
    )


def test_every_kind_has_a_severity_and_the_shared_layer_names_real_kinds():
    assert set(SECURITY_SEVERITY) == set(SecurityEventKind.values)
    assert {REFUSAL_API_AUTH_FAILED, REFUSAL_UNAUTHORISED} <= set(SecurityEventKind.values)


def test_unknown_kind_is_a_programming_error(db):
    with pytest.raises(ValueError, match="Unknown security event kind"):
        security_event(kind="made_up", source="x", message="y")
    assert not SecurityEvent.objects.exists()


def test_buckets_are_aligned_to_the_configured_width(settings):
    settings.OTA_SECURITY_EVENT_BUCKET_SECONDS = 300
    assert bucket_start(datetime(2026, 3, 2, 12, 4, 59, tzinfo=UTC)) == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert bucket_start(datetime(2026, 3, 2, 12, 5, 0, tzinfo=UTC)) == datetime(2026, 3, 2, 12, 5, tzinfo=UTC)


@pytest.mark.django_db(transaction=True)
def test_identical_refusals_make_one_counted_row(frozen):
    for _ in range(1_000):
        _auth_failure()
    event = SecurityEvent.objects.get()
    assert (event.count, event.key, event.device_serial, event.address) == (
        1_000,
        "device:TCU-1",
        "TCU-1",
        "203.0.113.9",
    )
    assert event.first_at == event.last_at == NOON
    assert event.bucket == datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_never_lose_a_count(frozen):
    def burst() -> None:
        try:
            for _ in range(150):
                _auth_failure()
        finally:
            connections.close_all()

    threads = [threading.Thread(target=burst) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert list(SecurityEvent.objects.values_list("count", flat=True)) == [600]


def test_rows_aggregate_by_kind_source_key_and_bucket(db, monkeypatch, make_user):
    person = make_user(username="mallory")
    moments = iter([NOON, NOON + timedelta(seconds=10), NOON + timedelta(minutes=5), NOON, NOON, NOON])
    monkeypatch.setattr(security.timezone, "now", lambda: next(moments))
    kind = SecurityEventKind.ACTION_UNAUTHORISED
    security_event(kind=kind, source="approvals.change_update", message="first", actor=person, subject="change:1")
    security_event(kind=kind, source="approvals.change_update", message="second", actor=person, subject="change:2")
    security_event(kind=kind, source="approvals.change_update", message="next bucket", actor=person)
    security_event(kind=kind, source="approvals.change_cancel", message="other source", actor=person)
    security_event(kind=SecurityEventKind.STALE_REVISION, source="approvals.change_update", message="k", actor=person)
    security_event(kind=kind, source="approvals.change_update", message="nobody")
    rows = {(e.kind, e.source, e.key, e.bucket.minute): e for e in SecurityEvent.objects.all()}
    assert len(rows) == 5
    same = rows[(kind, "approvals.change_update", f"user:{person.pk}", 0)]
    assert (same.count, same.message, same.subject, same.actor_name) == (2, "second", "change:2", "mallory")
    assert same.first_at == NOON and same.last_at == NOON + timedelta(seconds=10)
    assert rows[(kind, "approvals.change_update", f"user:{person.pk}", 5)].count == 1
    assert rows[(kind, "approvals.change_update", "-", 0)].actor_id is None


def test_many_serials_from_one_address_collapse_into_the_address_row(db, frozen, settings):
    settings.OTA_SECURITY_EVENT_KEYS_PER_ADDRESS = 3
    for n in range(50):
        _auth_failure(serial=f"BOGUS-{n}", address="198.51.100.7")
    _auth_failure(serial="BOGUS-0", address="198.51.100.7")  # a serial that has its own row keeps counting there
    keys = dict(SecurityEvent.objects.values_list("key", "count"))
    assert keys == {
        "device:BOGUS-0": 2,
        "device:BOGUS-1": 1,
        "device:BOGUS-2": 1,
        "address:198.51.100.7": 47,
    }
    assert SecurityEvent.objects.get(key="address:198.51.100.7").device_serial == "BOGUS-49"


def test_many_addresses_and_serials_end_in_one_overflow_row(db, frozen, settings):
    settings.OTA_SECURITY_EVENT_KEYS_PER_BUCKET = 10
    for n in range(120):
        _auth_failure(serial=f"R-{n}", address=f"10.0.{n // 250}.{n % 250}")
    assert SecurityEvent.objects.count() == 11
    overflow = SecurityEvent.objects.get(key=OVERFLOW_KEY)
    assert overflow.count == 110 and overflow.address == ""
    assert sum(SecurityEvent.objects.values_list("count", flat=True)) == 120
    # Another kind or source has its own allowance.
    security_event(kind=SecurityEventKind.DEVICE_REPLAY, source="device_api.status", message="m", device_serial="R-1")
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_REPLAY, key="device:R-1").exists()


def test_attacker_sized_values_are_clipped(db):
    _auth_failure(serial="S" * 600, address="A" * 300)
    event = SecurityEvent.objects.get()
    assert (len(event.device_serial), len(event.address)) == (64, 64)


@pytest.mark.django_db(transaction=True)
def test_event_persists_when_the_callers_transaction_rolls_back():
    with pytest.raises(RuntimeError), transaction.atomic():
        _auth_failure(serial="IN-TX")
        assert SecurityEvent.objects.filter(device_serial="IN-TX").exists()  # already committed elsewhere
        raise RuntimeError("the refusal rolls the transaction back")
    assert not connection.in_atomic_block
    assert SecurityEvent.objects.get(device_serial="IN-TX").count == 1


@pytest.mark.django_db(transaction=True)
def test_a_database_failure_is_logged_and_never_raised(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise OperationalError("database unavailable")

    monkeypatch.setattr(security, "_write", broken)
    with caplog.at_level(logging.ERROR, logger="ota.security"):
        _auth_failure(serial="LOST")
    assert "could not be stored" in caplog.text and "LOST" in caplog.text
    assert not SecurityEvent.objects.exists()


def test_purge_keeps_the_retention_period(db, settings, monkeypatch):
    settings.OTA_SECURITY_EVENT_RETENTION_DAYS = 30
    now = datetime.now(UTC)
    for age, serial in ((40, "OLD"), (29, "RECENT")):
        monkeypatch.setattr(security.timezone, "now", lambda age=age: now - timedelta(days=age))
        _auth_failure(serial=serial)
    monkeypatch.undo()
    # Rows committed through the second connection are deleted through the test's connection: same database.
    assert security_event_purge(now=now) == 1
    assert list(SecurityEvent.objects.values_list("device_serial", flat=True)) == ["RECENT"]
    assert security_event_purge_task() == 0
