"""What devices do to their deployments: receive an offer, report progress, confirm a healthy boot.

Reports carry a device-side sequence number: a replay or an older report changes nothing, and no report moves
a deployment backwards. A deployment succeeds only when the device confirms it booted the image it was
offered and passed its health window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from devices.models import Device
from ota_project.errors import Conflict, InvalidInput
from rollouts.choices import (
    DEPLOYMENT_PROGRESS,
    DEPLOYMENT_REPORTABLE,
    DEPLOYMENT_TERMINAL,
    DeploymentKind,
    DeploymentStatus,
    RolloutStatus,
)
from rollouts.models import Deployment
from rollouts.windows import region_open

RETRY_BACKOFF_SECONDS = 60
OFFERABLE_ROLLOUTS = (RolloutStatus.RUNNING, RolloutStatus.AWAITING_PROMOTION, RolloutStatus.ROLLING_BACK)
PHASE_OF_STATUS = {
    DeploymentStatus.DOWNLOADING: "download_seconds",
    DeploymentStatus.DOWNLOADED: "install_seconds",
    DeploymentStatus.INSTALLING: "install_seconds",
    DeploymentStatus.REBOOTING: "confirm_seconds",
    DeploymentStatus.CONFIRMING: "confirm_seconds",
}


@dataclass(frozen=True)
class Report:
    """One status report from a device about one deployment."""

    seq: int
    status: str
    detail: str = ""
    booted_version: str = ""  # required with `succeeded`: the image the device is running now
    health_passed: bool = False  # required with `succeeded`: the post-update checks passed
    failure_class: str = ""  # with failed / rolled_back: download, install, boot, health, ...


def _deadline(deployment: Deployment, status: str, now: datetime) -> datetime | None:
    key = PHASE_OF_STATUS.get(status)
    return now + timedelta(seconds=deployment.rollout.plan["deadlines"][key]) if key else None


@transaction.atomic
def deployment_offer(*, device: Device, now: datetime | None = None) -> Deployment | None:
    """The deployment to offer a checking-in device now, if any: rollbacks first, respecting pause, halt, pacing,
    the region's maintenance window and the plan's concurrent-download limit."""
    now = now or timezone.now()
    candidates = (
        # of=("self",): lock only the deployment rows. Without it PostgreSQL also locks the joined rollout, release
        # and artifact rows, so concurrent check-ins of one rollout skip each other's deployments (skip_locked).
        Deployment.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("rollout", "release__artifact")
        .filter(device=device, status__in=(DeploymentStatus.PENDING, DeploymentStatus.OFFERED))
        .order_by("-kind", "created_at")  # "update" > "rollback": rollbacks come first
    )
    for deployment in candidates:
        rollout = deployment.rollout
        allowed = OFFERABLE_ROLLOUTS if deployment.kind == DeploymentKind.UPDATE else (RolloutStatus.ROLLING_BACK,)
        if rollout.status not in allowed:
            continue
        if deployment.status == DeploymentStatus.OFFERED:
            return deployment
        if deployment.not_before and deployment.not_before > now:
            continue
        region = device.region
        if deployment.kind == DeploymentKind.UPDATE and not region_open(
            rollout.plan, region.code, region.time_zone, now
        ):
            continue
        if not _download_slot_free(deployment, region.code):
            continue
        Deployment.objects.filter(pk=deployment.pk, status=DeploymentStatus.PENDING).update(
            status=DeploymentStatus.OFFERED,
            attempts=deployment.attempts + 1,
            updated_at=now,
            deadline_at=max(
                deployment.deadline_at or now, now + timedelta(seconds=rollout.plan["deadlines"]["download_seconds"])
            ),
        )
        deployment.refresh_from_db()
        return deployment
    return None


def _download_slot_free(deployment: Deployment, region_code: str) -> bool:
    pacing = deployment.rollout.plan.get("pacing", {})
    limits = [(pacing.get("max_concurrent_downloads", 0), {})]
    region_limit = pacing.get("per_region", {}).get(region_code, {}).get("max_concurrent_downloads", 0)
    limits.append((region_limit, {"device__region__code": region_code}))
    for limit, scope in limits:
        if (
            limit
            and Deployment.objects.filter(
                rollout=deployment.rollout, status__in=(DeploymentStatus.OFFERED, DeploymentStatus.DOWNLOADING), **scope
            ).count()
            >= limit
        ):
            return False
    return True


def _progress_index(status: str) -> int:
    return DEPLOYMENT_PROGRESS.index(status) if status in DEPLOYMENT_PROGRESS else len(DEPLOYMENT_PROGRESS)


@transaction.atomic
def deployment_report(*, device: Device, deployment_id: int, report: Report, now: datetime | None = None) -> Deployment:
    """Apply a device's report to its own deployment: idempotent, out-of-order safe, never backwards."""
    now = now or timezone.now()
    if report.status not in DEPLOYMENT_REPORTABLE:
        raise InvalidInput(f"A device cannot report {report.status!r}.", fields={"status": ["Not reportable."]})
    deployment = (
        Deployment.objects.select_for_update(of=("self",))  # never the rollout row: reports would queue on it
        .select_related("rollout", "release")
        .filter(pk=deployment_id, device=device)
        .first()
    )
    if deployment is None:
        # Another device's deployment looks exactly like a missing one: no information leaks.
        raise InvalidInput("No such deployment for this device.", fields={"deployment": ["Unknown."]}, code="not_found")
    if report.seq <= deployment.last_seq or deployment.status in DEPLOYMENT_TERMINAL:
        return deployment  # replay, stale report, or already decided: nothing changes
    updates: dict[str, Any] = {"last_seq": report.seq, "updated_at": now, "detail": report.detail[:500]}
    status = report.status
    if status == DeploymentStatus.SUCCEEDED:
        if deployment.status != DeploymentStatus.CONFIRMING:
            raise Conflict(
                "Success is accepted only from a deployment that is confirming its boot.", code="not_confirming"
            )
        if report.booted_version != deployment.release.version or not report.health_passed:
            raise InvalidInput(
                "Success needs the booted version of the offered release and a passed health window.",
                fields={
                    "booted_version": [f"Expected {deployment.release.version}."],
                    "health_passed": ["Must be true."],
                },
            )
    retries = deployment.rollout.plan.get("retries", {}).get(report.failure_class, 0)
    if status == DeploymentStatus.FAILED and deployment.attempts <= retries:
        # A failure class the plan retries (download, install): offer the same deployment again after a backoff.
        backoff = timedelta(seconds=RETRY_BACKOFF_SECONDS * deployment.attempts)
        download = timedelta(seconds=deployment.rollout.plan["deadlines"]["download_seconds"])
        updates.update(
            status=DeploymentStatus.PENDING,
            not_before=now + backoff,
            deadline_at=now + backoff + download,
            failure_class=report.failure_class[:32],
        )
    elif status in (DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK, DeploymentStatus.SUCCEEDED):
        updates.update(
            status=status,
            finished_at=now,
            deadline_at=None,
            failure_class="" if status == DeploymentStatus.SUCCEEDED else report.failure_class[:32],
        )
    elif _progress_index(status) > _progress_index(deployment.status):
        updates.update(status=status, deadline_at=_deadline(deployment, status, now))
    Deployment.objects.filter(pk=deployment.pk).update(**updates)
    if updates.get("status") == DeploymentStatus.SUCCEEDED:
        Device.objects.filter(pk=device.pk).update(
            installed_version=deployment.release.version,
            installed_release_counter=deployment.release.release_counter,
            updated_at=now,
        )
    deployment.refresh_from_db()
    return deployment
