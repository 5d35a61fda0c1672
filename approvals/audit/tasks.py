"""Celery tasks of the audit room: short side effects only (signed checkpoints of the decision record, purges).

The task names keep their approvals.* prefix: they are stable names in beat schedules and queued messages."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from approvals.audit.checkpoints import checkpoint_if_moved
from approvals.audit.security import security_event_purge


@shared_task(
    name="approvals.audit_checkpoint",
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=3,
)
def audit_checkpoint_task() -> int | None:
    """Sign a checkpoint of the decision record's head if it moved and verifies (run every minute by celery beat)."""
    checkpoint = checkpoint_if_moved()
    return checkpoint.seq if checkpoint else None


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
