"""Celery tasks of change control: housekeeping only."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from approvals.security import security_event_purge


@shared_task(
    name="approvals.security_event_purge",
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def security_event_purge_task() -> int:
    """Delete security events past their retention period (run daily by celery beat)."""
    return security_event_purge()
