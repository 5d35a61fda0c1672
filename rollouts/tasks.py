"""Celery tasks of rollouts: short housekeeping only (everything that waits belongs to the Temporal workflow)."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from rollouts import fleet_safety, rollout_services
from workflows.client import TemporalUnavailable


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


@shared_task(
    name="rollouts.fleet_safety_check",
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError),
    retry_backoff=True,
    max_retries=8,
)
def fleet_safety_check_task(release_id: int | None = None) -> list[int]:
    """The fleet-wide safety net for one release, or (celery beat, every OTA_FLEET_CHECK_SECONDS) for every release
    with a running rollout, then the safety pauses asked but not yet carried out (a lost task, Temporal down)."""
    releases = [release_id] if release_id is not None else fleet_safety.releases_to_check()
    asked: list[int] = []
    for release in releases:
        asked += fleet_safety.fleet_safety_check(release_id=release)
    if release_id is None:
        for rollout_id in fleet_safety.safety_pauses_pending():
            if rollout_id not in asked:
                fleet_safety_pause_task.delay(rollout_id)
    return asked


@shared_task(
    name="rollouts.fleet_safety_pause",
    ignore_result=True,
    autoretry_for=(OperationalError, InterfaceError, TemporalUnavailable),
    retry_backoff=True,
    retry_backoff_max=20,
    max_retries=6,
)
def fleet_safety_pause_task(rollout_id: int) -> bool:
    """Send the safety net's pause to the rollout's workflow (the path an operator's pause takes); True if paused."""
    return rollout_services.rollout_safety_pause(rollout_id=rollout_id)
