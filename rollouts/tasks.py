"""Celery tasks of rollouts: short housekeeping only (everything that waits belongs to the Temporal workflow)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from rollouts import rollout_services


@shared_task(
    name="rollouts.finished_rollouts_expire_deadlines",
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def finished_rollouts_expire_deadlines_task() -> int:
    """Time out stragglers of finished rollouts past their deadline (run every few minutes by celery beat)."""
    return rollout_services.finished_rollouts_expire_deadlines()
