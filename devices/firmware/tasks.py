"""Celery tasks of the firmware room: short side effects only (the image repository's timestamp/snapshot refresh)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from devices.firmware.repository.services import image_repository_refresh


@shared_task(
    name="firmware.image_repository_refresh",
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=3,
)
def image_repository_refresh_task() -> list[str]:
    """Re-sign the image repository's snapshot and timestamp when near expiry (run every 10 minutes by celery beat)."""
    return image_repository_refresh()
