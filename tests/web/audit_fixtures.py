"""Fixtures of the page tests: a change rolled out to its pilot wave (and rolled back), a role-less user, no Temporal."""

from __future__ import annotations

from typing import Any

import pytest

from rollouts import rollout_services as steps
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.deployment_services import deployment_offer
from rollouts.models import Deployment
from tests.fleet_driver import HAPPY, play
from tests.support.rollouts import authorize
from workflows.types import PhaseChange


def drive(deployment: Deployment, *statuses: str) -> Deployment:
    """Offer the deployment to its device, then report these statuses as the device would (device services)."""
    offered = deployment_offer(device_id=deployment.device_id)
    assert offered is not None and offered.pk == deployment.pk
    play(offered, statuses)
    offered.refresh_from_db()
    return offered


@pytest.fixture
def no_temporal(settings) -> None:
    """Pages and services run without a workflow engine (rollout steps are played through the services)."""
    settings.TEMPORAL_ENABLED = False


@pytest.fixture
def nobody(make_user):
    """A signed-in user without any role."""
    return make_user(username="nora-norole")


@pytest.fixture
def rolled_out(approved_change, operator, no_temporal) -> dict[str, Any]:
    """The approved change started by an operator, its pilot wave assigned: one device succeeded, one failed,
    and the workflow halted the rollout."""
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    first, second = Deployment.objects.filter(rollout=rollout).select_related("device", "release").order_by("id")
    succeeded = drive(first, *HAPPY)
    failed = drive(second, "downloading", "installing", "failed")
    assert succeeded.status == DeploymentStatus.SUCCEEDED and failed.status == DeploymentStatus.FAILED
    steps.wave_health(rollout_id=rollout.pk, wave_index=0)
    steps.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason="pilot failure rate 50% over the 5% threshold")
    return {
        "change": approved_change,
        "rollout": rollout,
        "succeeded": succeeded,
        "failed": failed,
    }


@pytest.fixture
def rolled_back(rolled_out, operator) -> dict[str, Any]:
    """The halted rollout rolled back by an operator: the device that took the new image went back to the old one."""
    rollout = rolled_out["rollout"]
    authorize(rollout, "rollback", operator, reason="boot failures in pilot")
    steps.rollback_assign(rollout_id=rollout.pk)
    rollback = Deployment.objects.select_related("device", "release").get(rollout=rollout, kind=DeploymentKind.ROLLBACK)
    rolled_out["rollback"] = drive(rollback, *HAPPY)
    return rolled_out
