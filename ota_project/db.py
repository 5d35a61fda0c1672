"""Transactions that survive PostgreSQL's concurrency refusals: retry serialization failures and deadlocks."""

from __future__ import annotations

import functools
import logging
import random
import time
from collections.abc import Callable
from typing import ParamSpec, TypeVar
from urllib.parse import quote

from django.db import DEFAULT_DB_ALIAS, OperationalError, connections, transaction

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

# SQLSTATEs after which the whole transaction may simply run again: PostgreSQL rolled it back and nothing it did
# is left behind. serialization_failure (40001) and deadlock_detected (40P01).
RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
# Seconds a client is asked to wait when a retryable error still reaches it (the 503's Retry-After).
RETRY_AFTER_SECONDS = 1
_BACKOFF_BASE_SECONDS = 0.05


def is_retryable_db_error(exc: BaseException) -> bool:
    """Whether a database error is a serialization failure or a deadlock (the transaction may run again)."""
    if not isinstance(exc, OperationalError):
        return False
    cause = exc.__cause__
    return getattr(cause, "sqlstate", None) in RETRYABLE_SQLSTATES


def _backoff(attempt: int) -> float:
    # Jitter keeps two transactions that deadlocked each other from colliding again on the same schedule.
    return _BACKOFF_BASE_SECONDS * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)


def atomic_with_retry(attempts: int = 3, *, using: str | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the function in `transaction.atomic()`; as the outermost transaction, retry it on 40001/40P01.

    Inside an outer atomic block it runs once: the failed statement has already poisoned the outer transaction,
    so only whoever owns the outermost block can run it again. The function must be safe to re-run from the
    start (re-read what it locks; put side effects in `transaction.on_commit`, which a rollback discards).
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    alias = using or DEFAULT_DB_ALIAS

    def decorator(func: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(func)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            if connections[alias].in_atomic_block:
                with transaction.atomic(using=alias):
                    return func(*args, **kwargs)
            attempt = 1
            while True:
                try:
                    with transaction.atomic(using=alias):
                        return func(*args, **kwargs)
                except OperationalError as exc:
                    if attempt >= attempts or not is_retryable_db_error(exc):
                        raise
                    delay = _backoff(attempt)
                    logger.warning(
                        "%s: %s on attempt %d of %d; retrying in %.3f s",
                        func.__qualname__,
                        getattr(exc.__cause__, "sqlstate", "?"),
                        attempt,
                        attempts,
                        delay,
                    )
                    time.sleep(delay)
                    attempt += 1

        return wrapper

    return decorator


def database_url(alias: str = DEFAULT_DB_ALIAS) -> str:
    """A DATABASE_URL naming the database `alias` uses now (under pytest: the test database), for child processes.
    A unix-socket server (the embedded default) is named by `?host=<directory>`."""
    db = connections[alias].settings_dict
    user = quote(db.get("USER") or "", safe="")
    password = f":{quote(db['PASSWORD'], safe='')}" if db.get("PASSWORD") else ""
    credentials = f"{user}{password}@" if user else ""
    host = str(db.get("HOST") or db.get("OPTIONS", {}).get("host") or "127.0.0.1")
    name = quote(str(db["NAME"]), safe="")
    if host.startswith("/"):
        return f"postgres://{credentials}/{name}?host={quote(host, safe='/')}"
    return f"postgres://{credentials}{host}:{db.get('PORT') or 5432}/{name}"
