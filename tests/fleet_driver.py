"""Drive devices through the device services (the real agent and HTTP API come with the device issue):
each call offers pending work to every device of a rollout and plays one behaviour per device."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import close_old_connections

from rollouts.choices import DEPLOYMENT_TERMINAL, RolloutStatus
from rollouts.deployment_services import Report, deployment_offer, deployment_report
from rollouts.models import Deployment, Rollout

HAPPY = ("downloading", "downloaded", "installing", "rebooting", "confirming", "succeeded")
FAIL_BOOT = ("downloading", "downloaded", "installing", "rebooting", "rolled_back")

Behaviour = Callable[[Deployment], tuple[str, ...] | None]


def healthy(_: Deployment) -> tuple[str, ...]:
    return HAPPY


def play(deployment: Deployment, statuses: tuple[str, ...]) -> None:
    device = deployment.device
    for seq, status in enumerate(statuses, start=deployment.last_seq + 1):
        extra = {}
        if status == "succeeded":
            extra = {"booted_version": deployment.release.version, "health_passed": True}
        elif status in ("failed", "rolled_back"):
            extra = {"failure_class": "boot"}
        deployment_report(device=device, deployment_id=deployment.pk, report=Report(seq, status, **extra))


def step(rollout_id: int, behaviour: Behaviour) -> int:
    """One poll of every device with open work in the rollout; returns how many deployments moved."""
    moved = 0
    device_ids = (
        Deployment.objects.filter(rollout_id=rollout_id)
        .exclude(status__in=DEPLOYMENT_TERMINAL)
        .values_list("device_id", flat=True)
        .distinct()
    )
    for device_id in list(device_ids):
        deployment = deployment_offer(device=Deployment.objects.filter(device_id=device_id).first().device)
        if deployment is None:
            continue
        statuses = behaviour(deployment)
        if statuses:
            play(deployment, statuses)
            moved += 1
    return moved


def run_until(
    rollout_id: int, behaviour: Behaviour, done: Callable[[Rollout], bool], *, timeout: float = 60.0
) -> Rollout:
    """Poll like a fleet would until `done(rollout)` holds (or fail after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        close_old_connections()
        rollout = Rollout.objects.get(pk=rollout_id)
        if done(rollout):
            return rollout
        if time.monotonic() > deadline:
            raise AssertionError(
                f"rollout {rollout_id} stuck at {rollout.status} wave {rollout.current_wave}: {rollout.status_reason}"
            )
        step(rollout_id, behaviour)
        time.sleep(0.2)


def finished(rollout: Rollout) -> bool:
    return rollout.status in (RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK)
