"""Wave health from the deployment rows: the counts every gate decision (workflow, breaker, pages) is made on."""

from __future__ import annotations

from typing import Any

from django.db.models import Count

from approvals.plans import PlanWave
from rollouts.choices import DEPLOYMENT_IN_PROGRESS, DeploymentStatus
from workflows.types import WaveHealth, WavePlan

HEALTH_FIELDS = ("total", "pending", "in_progress", "succeeded", "failed", "timed_out", "rolled_back", "cancelled")


def deployment_health(deployments: Any) -> WaveHealth:
    """Count deployments per outcome in one aggregate query (the gates' evidence; read-only)."""
    counts = dict(deployments.order_by().values_list("status").annotate(n=Count("id")))
    return WaveHealth(
        total=sum(counts.values()),
        pending=counts.get(DeploymentStatus.PENDING, 0),
        in_progress=sum(counts.get(s, 0) for s in DEPLOYMENT_IN_PROGRESS),
        succeeded=counts.get(DeploymentStatus.SUCCEEDED, 0),
        failed=counts.get(DeploymentStatus.FAILED, 0),
        timed_out=counts.get(DeploymentStatus.TIMED_OUT, 0),
        rolled_back=counts.get(DeploymentStatus.ROLLED_BACK, 0),
        cancelled=counts.get(DeploymentStatus.CANCELLED, 0) + counts.get(DeploymentStatus.SKIPPED, 0),
    )


def health_counts(health: WaveHealth) -> dict[str, int]:
    """The counts as stored on waves, rollouts and health samples."""
    return {name: getattr(health, name) for name in HEALTH_FIELDS}


def wave_plan_of(wave: PlanWave) -> WavePlan:
    """One approved wave of a plan as the gate policy (and the workflow input) reads it."""
    return WavePlan(
        wave.name,
        wave.soak_seconds,
        wave.min_sample,
        float(wave.success_threshold),
        float(wave.failure_threshold),
        wave.promotion,
    )
