"""atomic_with_retry: serialization failures and deadlocks re-run the outermost transaction, never a nested one."""

from __future__ import annotations

import threading

import psycopg.errors
import pytest
from django.contrib.auth.models import Group
from django.db import IntegrityError, OperationalError, connection, transaction

from ota_project import db
from ota_project.db import atomic_with_retry, is_retryable_db_error


def _deadlock() -> OperationalError:
    error = OperationalError("deadlock detected")
    error.__cause__ = psycopg.errors.DeadlockDetected("deadlock detected")
    return error


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(db, "_BACKOFF_BASE_SECONDS", 0.0)


def test_retryable_errors_are_only_serialization_failures_and_deadlocks():
    serialization = OperationalError("could not serialize")
    serialization.__cause__ = psycopg.errors.SerializationFailure("could not serialize")
    other = OperationalError("server closed the connection")
    other.__cause__ = psycopg.errors.AdminShutdown("bye")
    assert is_retryable_db_error(_deadlock()) and is_retryable_db_error(serialization)
    assert not is_retryable_db_error(other) and not is_retryable_db_error(OperationalError("no cause"))


@pytest.mark.django_db(transaction=True)
def test_deadlock_twice_then_success_returns_the_result():
    calls = []

    @atomic_with_retry(attempts=3)
    def flaky() -> str:
        calls.append(connection.in_atomic_block)
        Group.objects.create(name=f"attempt-{len(calls)}")
        if len(calls) < 3:
            raise _deadlock()
        return "done"

    assert flaky() == "done"
    assert calls == [True, True, True]
    # The failed attempts were rolled back: only the third attempt's row is left.
    assert list(Group.objects.filter(name__startswith="attempt-").values_list("name", flat=True)) == ["attempt-3"]


@pytest.mark.django_db(transaction=True)
def test_gives_up_after_the_last_attempt():
    calls = []

    @atomic_with_retry(attempts=2)
    def always_deadlocks() -> None:
        calls.append(1)
        raise _deadlock()

    with pytest.raises(OperationalError):
        always_deadlocks()
    assert len(calls) == 2


@pytest.mark.django_db(transaction=True)
def test_other_errors_are_not_retried():
    calls = []

    @atomic_with_retry(attempts=3)
    def broken() -> None:
        calls.append(1)
        raise IntegrityError("duplicate key")

    with pytest.raises(IntegrityError):
        broken()
    assert len(calls) == 1


@pytest.mark.django_db(transaction=True)
def test_inside_an_outer_transaction_it_runs_once():
    calls = []

    @atomic_with_retry(attempts=3)
    def deadlocks() -> None:
        calls.append(1)
        raise _deadlock()

    with pytest.raises(OperationalError), transaction.atomic():
        deadlocks()
    assert len(calls) == 1


@pytest.mark.django_db(transaction=True)
def test_a_real_deadlock_is_retried_and_both_transactions_succeed():
    first, second = Group.objects.create(name="row-a"), Group.objects.create(name="row-b")
    both_hold_their_first_row = threading.Barrier(2, timeout=10)
    attempts: dict[str, int] = {"forward": 0, "backward": 0}
    errors: list[BaseException] = []

    def lock_in_order(name: str, order: tuple[int, int]) -> None:
        @atomic_with_retry(attempts=3)
        def work() -> None:
            attempts[name] += 1
            Group.objects.select_for_update().get(pk=order[0])
            if attempts[name] == 1:
                both_hold_their_first_row.wait()
            # Each now waits for the row the other holds: PostgreSQL detects the cycle and aborts one of them.
            Group.objects.select_for_update().get(pk=order[1])
            Group.objects.filter(pk=order[1]).update(name=f"{Group.objects.get(pk=order[1]).name}+{name}")

        try:
            work()
        except BaseException as exc:  # reported to the test thread below
            errors.append(exc)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=lock_in_order, args=("forward", (first.pk, second.pk))),
        threading.Thread(target=lock_in_order, args=("backward", (second.pk, first.pk))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert sorted(attempts.values()) == [1, 2]  # exactly one of them was the deadlock victim and ran again
    assert Group.objects.get(pk=second.pk).name == "row-b+forward"
    assert Group.objects.get(pk=first.pk).name == "row-a+backward"
