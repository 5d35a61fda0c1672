"""Celery tasks of the alerts: webhook deliveries (retried with backoff) and the sweep for due deliveries."""

from __future__ import annotations

from typing import Any

from celery import shared_task
from django.db import InterfaceError, OperationalError

from ota_project.alerts import services
from ota_project.celery import VISIBILITY_TIMEOUT_SECONDS

# A retry waits in its worker as an unacknowledged ETA message: keep its countdown well inside the broker's
# visibility timeout (ota_project.celery). Longer backoffs are left to the sweep, which reads `next_attempt_at`.
MAX_RETRY_COUNTDOWN = max(1, VISIBILITY_TIMEOUT_SECONDS // 2)


@shared_task(
    bind=True,
    name="alerts.webhook_deliver",
    ignore_result=True,
    acks_late=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    retry_backoff_max=20,
    max_retries=20,
)
def webhook_deliver_task(self: Any, delivery_id: int) -> bool:
    """POST one alert delivery; on failure retry with the delivery's backoff (eagerly run: the sweep retries)."""
    outcome = services.webhook_attempt(delivery_id=delivery_id)
    if outcome.retry_in is not None and outcome.retry_in <= MAX_RETRY_COUNTDOWN and not self.request.is_eager:
        raise self.retry(countdown=outcome.retry_in)
    return outcome.delivered


@shared_task(name="alerts.webhook_sweep", ignore_result=True, autoretry_for=(OperationalError, InterfaceError))
def webhook_sweep_task() -> int:
    """Attempt every due pending delivery (run every 30 s by celery beat); returns how many were attempted."""
    attempted = 0
    for delivery_id in services.webhook_deliveries_due():
        attempted += services.webhook_attempt(delivery_id=delivery_id).attempted
    return attempted
