"""Approvals services under real PostgreSQL concurrency: deadlocks are retried, the change lock stays narrow."""

from __future__ import annotations

import threading
import time

import psycopg.errors
import pytest
from django.db import OperationalError, connection, transaction

from approvals import services
from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify, record_decision
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from ota_project import db
from ota_project.db import atomic_with_retry
from tests.web.helpers import page_client


def _in_thread(target) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=run)
    thread.start()
    return thread, errors


def _wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.02)


def _advisory_lock_waiters() -> int:
    # pg_locks is read afresh on every call (unlike pg_stat_activity, which is snapshotted per transaction).
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_cancel_deadlocked_against_the_chain_lock_is_retried_and_both_succeed(submitted_change, requester, monkeypatch):
    monkeypatch.setattr(db, "_BACKOFF_BASE_SECONDS", 0.0)
    change = submitted_change
    lock_calls: list[int] = []
    real_lock = services._lock

    def counting_lock(locked: ChangeRequest) -> ChangeRequest:
        lock_calls.append(locked.pk)
        return real_lock(locked)

    monkeypatch.setattr(services, "_lock", counting_lock)
    chain_held = threading.Event()
    other_attempts: list[int] = []

    @atomic_with_retry()
    def append_then_lock_the_change() -> None:
        # Like wave assignment: hold the decision-record chain lock, then need a row the change service holds.
        other_attempts.append(1)
        record_decision(actor=None, action="test.concurrent", object_type="test", object_id=1)
        if len(other_attempts) == 1:
            chain_held.set()
            _wait_for(lambda: _advisory_lock_waiters() > 0)  # the cancel holds the change and waits for the chain
        ChangeRequest.objects.select_for_update().get(pk=change.pk)

    def cancel() -> None:
        chain_held.wait(10)
        services.change_cancel(actor=requester, change=change, reason="Superseded.")

    other, other_errors = _in_thread(append_then_lock_the_change)
    canceller, cancel_errors = _in_thread(cancel)
    other.join(30)
    canceller.join(30)

    assert other_errors == [] and cancel_errors == []
    assert len(lock_calls) + len(other_attempts) == 3  # PostgreSQL aborted one of them once; it ran again
    change.refresh_from_db()
    assert change.status == ChangeStatus.CANCELLED
    assert DecisionRecord.objects.filter(action="change.cancel", object_id=str(change.pk)).count() == 1
    assert DecisionRecord.objects.filter(action="test.concurrent").count() == 1
    assert chain_verify().ok


@pytest.mark.django_db(transaction=True)
def test_the_change_lock_leaves_its_release_rows_free_for_foreign_key_checks(submitted_change):
    release, artifact = submitted_change.release, submitted_change.release.artifact
    rollback = submitted_change.rollback_release
    results: list[str] = []

    def key_share_now() -> None:
        # What a deployment insert's foreign-key check takes on the release row; NOWAIT fails instead of waiting.
        with transaction.atomic(), connection.cursor() as cursor:
            for model, pk in (
                (type(release), release.pk),
                (type(rollback), rollback.pk),
                (type(artifact), artifact.pk),
            ):
                cursor.execute(f"SELECT 1 FROM {model._meta.db_table} WHERE id = %s FOR KEY SHARE NOWAIT", [pk])
                results.append(model._meta.db_table)

    with transaction.atomic():
        services._lock(submitted_change)
        thread, errors = _in_thread(key_share_now)
        thread.join(10)

    assert errors == [] and len(results) == 3


@pytest.mark.django_db(transaction=True)
def test_a_deadlock_that_outlasts_the_retries_is_a_503_with_retry_after_and_changes_nothing(
    submitted_change, requester, client_for, monkeypatch
):
    monkeypatch.setattr(db, "_BACKOFF_BASE_SECONDS", 0.0)
    before = DecisionRecord.objects.count()

    def deadlocked(change):
        error = OperationalError("deadlock detected")
        error.__cause__ = psycopg.errors.DeadlockDetected("deadlock detected")
        raise error

    monkeypatch.setattr(services, "_lock", deadlocked)
    response = client_for(requester).post(
        f"/api/v1/changes/{submitted_change.pk}/cancel/", {"reason": "Superseded."}, format="json"
    )
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert response.json()["error"]["code"] == "retry_later"
    submitted_change.refresh_from_db()
    assert submitted_change.status == ChangeStatus.SUBMITTED and DecisionRecord.objects.count() == before


@pytest.mark.django_db
def test_a_deadlock_on_a_page_is_a_503_page_not_a_500(submitted_change, requester, monkeypatch):
    def serialization_failure(change):
        error = OperationalError("could not serialize access")
        error.__cause__ = psycopg.errors.SerializationFailure("could not serialize access")
        raise error

    monkeypatch.setattr(services, "_lock", serialization_failure)
    response = page_client(requester).post(f"/changes/{submitted_change.pk}/cancel/", {"cancel-reason": "Gone."})
    assert response.status_code == 503 and response["Retry-After"] == "1"
    assert "Busy, please retry" in response.content.decode()
    submitted_change.refresh_from_db()
    assert submitted_change.status == ChangeStatus.SUBMITTED
