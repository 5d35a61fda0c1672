"""Celery tasks of the inventory: short side effects only (telemetry batches and their housekeeping)."""

from __future__ import annotations

from typing import TypedDict

from celery import shared_task
from django.db import InterfaceError, OperationalError

from devices import telemetry


# Database trouble is retried with backoff; the services are idempotent, so a retry or a redelivery is harmless.
# The countdown stays below the Redis visibility timeout (ota_project.celery): a retry waits in its worker as an
# unacknowledged ETA message, which Redis would otherwise hand to a second worker. A batch whose retries run out
# stays unprocessed and is enqueued again by telemetry_requeue_stale.
class _RetryOptions(TypedDict):
    autoretry_for: tuple[type[Exception], ...]
    retry_backoff: bool
    retry_backoff_max: int
    max_retries: int


RETRY: _RetryOptions = {
    "autoretry_for": (OperationalError, InterfaceError),
    "retry_backoff": True,
    "retry_backoff_max": 20,
    "max_retries": 8,
}


@shared_task(name="devices.telemetry_batch_process", ignore_result=True, acks_late=True, **RETRY)
def telemetry_batch_process_task(batch_pk: int) -> int | None:
    """Fold one accepted telemetry batch into samples (exactly once, whatever the deliveries)."""
    return telemetry.telemetry_batch_process(batch_pk=batch_pk)


@shared_task(name="devices.telemetry_requeue_stale", ignore_result=True, **RETRY)
def telemetry_requeue_stale_task() -> int:
    """Enqueue batches again whose task was lost (run every 30 s by celery beat)."""
    return telemetry.telemetry_requeue_stale()


@shared_task(name="devices.telemetry_purge", ignore_result=True, **RETRY)
def telemetry_purge_task() -> dict[str, int]:
    """Delete telemetry past its retention period (run hourly by celery beat, a bounded chunk each time)."""
    return telemetry.telemetry_purge()
