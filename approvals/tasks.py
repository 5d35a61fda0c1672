"""Celery tasks of change control: short side effects only (signed checkpoints of the decision record)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from approvals.audit_checkpoints import checkpoint_if_moved


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
