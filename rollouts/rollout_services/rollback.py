"""The rollback saga and the end of a rollout: rollback deployments only for devices that took the new image, their
health, and finishing (completed, aborted, rolled back) only when the record shows it is allowed."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from approvals import services as change_services
from approvals.choices import ChangeStatus
from rollouts.assignment import NewDeployment, insert_deployments
from rollouts.choices import (
    DEPLOYMENT_FAILURES,
    DeploymentKind,
    DeploymentStatus,
    RolloutStatus,
    WaveStatus,
)
from rollouts.health import deployment_health
from rollouts.models import Deployment, HealthSample, Rollout, Wave
from rollouts.step_keys import rollback_step_key
from rollouts.transitions import deployment_transition, wave_transition
from workflows.types import Update, WaveHealth

if TYPE_CHECKING:
    pass
from rollouts.rollout_services.shared import _forged, _person_decided, _record, _transition
from rollouts.rollout_services.waves import _expire_deadlines, _health_sample, _promoted_frontier

# Update deployments whose device took (or may have taken) the new image, once the update is over for the device.
TOOK_NEW_IMAGE = (
    DeploymentStatus.INSTALLING,
    DeploymentStatus.REBOOTING,
    DeploymentStatus.CONFIRMING,
    DeploymentStatus.SUCCEEDED,
)


_UPDATE_IN_FLIGHT = (DeploymentStatus.INSTALLING, DeploymentStatus.REBOOTING, DeploymentStatus.CONFIRMING)


def _rollback_allowed(rollout: Rollout) -> bool:
    """A rollback is asked for by a person (recorded), or by the abort policy after a wave failed."""
    if rollout.status == RolloutStatus.ROLLING_BACK:
        return True
    if _person_decided(rollout, Update.ROLLBACK):
        return True
    failed = Wave.objects.filter(rollout=rollout).filter(
        Q(status=WaveStatus.FAILED) | Q(breaker_tripped_at__isnull=False)
    )
    return rollout.approved_plan.rolls_back and failed.exists()


def _assign_rollbacks(rollout: Rollout, now: datetime) -> int:
    """Insert rollback deployments for devices whose update is over and took the new image; the ones still
    installing get theirs once they finish (a device holds one active deployment at a time)."""
    updates = rollout.deployments.filter(kind=DeploymentKind.UPDATE)
    took = updates.filter(status=DeploymentStatus.SUCCEEDED) | updates.filter(
        status__in=DEPLOYMENT_FAILURES - {DeploymentStatus.ROLLED_BACK}, failure_class__in=["install", "confirm"]
    )
    already = rollout.deployments.filter(kind=DeploymentKind.ROLLBACK).values("device_id")
    rows = list(took.exclude(device_id__in=already).values_list("device_id", "wave_id"))
    download = timedelta(seconds=rollout.approved_plan.deadlines.download_seconds)
    insert_deployments(
        [
            NewDeployment(
                rollout.pk,
                wave_id,
                device_id,
                rollout.rollback_release_id,
                DeploymentKind.ROLLBACK,
                now,
                now + download,
            )
            for device_id, wave_id in rows
        ]
    )
    return len(rows)


@transaction.atomic
def rollback_assign(*, rollout_id: int) -> int:
    """Offer the rollback release to every device that took the new image; idempotent: the saga's beginning is
    recorded once (a re-run after continue-as-new or a retry records nothing; later offers are mechanics)."""
    rollout = Rollout.objects.select_for_update(of=("self",)).get(pk=rollout_id)
    if not _rollback_allowed(rollout):
        raise _forged(rollout, "No person asked for a rollback and no wave failed under a halt_and_rollback policy.")
    now = timezone.now()
    deployment_transition(
        deployments=rollout.deployments.filter(kind=DeploymentKind.UPDATE),
        to=DeploymentStatus.CANCELLED,
        now=now,
        reason="rollout rolling back",
    )
    added = _assign_rollbacks(rollout, now)
    entered = _transition(
        rollout,
        RolloutStatus.ROLLING_BACK,
        actor=None,
        action="rollout.rolling_back",
        reason="rollback offered to every device that took the new image",
    )
    if entered or added:
        _record(
            None, rollout, "rollout.rollback_assign", after={"devices": added}, step_key=rollback_step_key(rollout.pk)
        )
    return rollout.deployments.filter(kind=DeploymentKind.ROLLBACK).count()


@transaction.atomic
def rollback_health(*, rollout_id: int) -> WaveHealth:
    """Offer the rollback to devices whose update finished since, expire missed rollback deadlines, then count the
    rollback deployments; updates still installing count as pending (the saga waits for them)."""
    rollout = Rollout.objects.select_for_update(of=("self",)).get(pk=rollout_id)
    now = timezone.now()
    updates = Deployment.objects.filter(rollout_id=rollout_id, kind=DeploymentKind.UPDATE)
    _expire_deadlines(updates.filter(status__in=_UPDATE_IN_FLIGHT), now)
    if rollout.status == RolloutStatus.ROLLING_BACK:
        _assign_rollbacks(rollout, now)
    deployments = Deployment.objects.filter(rollout_id=rollout_id, kind=DeploymentKind.ROLLBACK)
    _expire_deadlines(deployments, now)
    health = deployment_health(deployments)
    waiting = updates.filter(status__in=_UPDATE_IN_FLIGHT).count()
    health = replace(health, total=health.total + waiting, pending=health.pending + waiting)
    _health_sample(rollout_id, rollout.current_wave, HealthSample.Kind.ROLLBACK, health)
    return health


def _require_finish_allowed(rollout: Rollout, outcome: str, actor_id: int | None) -> None:
    """Every way a rollout ends is backed by the database: a completion by promoted waves, an abort or a
    person's rollback by that person's recorded decision, a rollback by the saga having begun."""
    if outcome == RolloutStatus.COMPLETED:
        last = rollout.waves.count() - 1
        if (
            _promoted_frontier(rollout) < last
            or not Wave.objects.filter(rollout=rollout, index=last, started_at__isnull=False).exists()
        ):
            raise _forged(rollout, "The rollout cannot complete: not every wave was opened through a promotion.")
        return
    if outcome == RolloutStatus.ABORTED and not _person_decided(rollout, Update.ABORT, actor_id):
        raise _forged(rollout, "No operator's abort is recorded for this rollout.")
    if outcome == RolloutStatus.ROLLED_BACK and rollout.status != RolloutStatus.ROLLING_BACK:
        raise _forged(rollout, "The rollout was not rolling back.")
    if outcome == RolloutStatus.ROLLED_BACK and actor_id and not _person_decided(rollout, Update.ROLLBACK, actor_id):
        raise _forged(rollout, "That person's rollback is not recorded.")


@transaction.atomic
def rollout_finish(*, rollout_id: int, outcome: str, reason: str = "", actor_id: int | None = None) -> None:
    """End the rollout (completed, aborted or rolled back) and close its change accordingly; idempotent."""
    rollout = Rollout.objects.select_for_update(of=("self",)).select_related("change").get(pk=rollout_id)
    if rollout.status == outcome:
        return
    _require_finish_allowed(rollout, outcome, actor_id)
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id else None
    now = timezone.now()
    if outcome in (RolloutStatus.ABORTED, RolloutStatus.COMPLETED):
        # Nothing is offered after the end: undelivered work is cancelled, never left pending for ever. Devices
        # already installing finish and report; their deadlines still apply (finished_rollouts_expire_deadlines).
        deployment_transition(
            deployments=rollout.deployments.all(),
            to=DeploymentStatus.CANCELLED,
            now=now,
            reason=f"rollout {outcome}",
        )
    if outcome == RolloutStatus.COMPLETED:
        wave_transition(waves=Wave.objects.filter(rollout=rollout), to=WaveStatus.PROMOTED)
    # The finished rollout shows why it ended (the workflow projects nothing after this step).
    _transition(
        rollout,
        outcome,
        actor=actor,
        action=f"rollout.{outcome}",
        reason=reason,
        finished_at=now,
        gate="",
        status_reason=reason or rollout.status_reason,
    )
    if rollout.change.status == ChangeStatus.IMPLEMENTING:
        change_services.change_mark_implemented(actor=actor, change=rollout.change, outcome=outcome, reason=reason)
