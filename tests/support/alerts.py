"""Asserting alerts: concurrent raises of one condition make one alert, counted each time and notified once."""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.core import mail
from django.db import connection

from ota_project.alerts.models import Alert


def raised_concurrently(raise_once: Callable[[], object], *, times: int, timeout: float = 60) -> Alert:
    """Run `raise_once` in `times` threads released at once (each on its own database connection); assert that none
    failed and that together they made one alert, counted `times` times and notified once (one e-mail). Returns it."""
    barrier = threading.Barrier(times)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            raise_once()
        except BaseException as exc:  # reported to the test thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(times)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert not errors
    alert = Alert.objects.get()
    assert (alert.occurrences, alert.notifications, len(mail.outbox)) == (times, 1, 1)
    return alert
