"""Another connection's open transaction, for tests of what a second worker sees while one holds row locks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from django.db import connection, transaction


@contextmanager
def transaction_held(work: Callable[[], object], *, rollback: bool = False, timeout: float = 10) -> Iterator[None]:
    """Run `work` in a transaction on another thread's connection and keep that transaction open (its locks held)
    for the with-block; then it commits, or rolls back with `rollback` (a worker that dies before its commit).
    An error in `work` fails the test."""
    ready, release = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with transaction.atomic():
                work()
                ready.set()
                release.wait(timeout)
                if rollback:
                    transaction.set_rollback(True)
        except BaseException as exc:  # noqa: BLE001 - reported to the test below
            errors.append(exc)
        finally:
            ready.set()
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        ready.wait(timeout)
        assert not errors, errors
        yield
    finally:
        release.set()
        holder.join(timeout)
    assert not errors, errors
