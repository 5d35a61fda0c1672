"""Drive devices through the device services: each call offers pending work to every device of a rollout and plays
one behaviour per device (`rollouts.demo.playback`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.db import close_old_connections

from rollouts.choices import DEPLOYMENT_TERMINAL, RolloutStatus
from rollouts.demo.playback import FAIL_BOOT, HAPPY, play
from rollouts.deployment_services import deployment_offer
from rollouts.models import Deployment, Rollout

__all__ = ["FAIL_BOOT", "HAPPY", "finished", "healthy", "play", "run_until", "step"]

Behaviour = Callable[[Deployment], tuple[str, ...] | None]


def healthy(_: Deployment) -> tuple[str, ...]:
    return HAPPY


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
        deployment = deployment_offer(device_id=device_id)
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
