"""Moving a rollout through its gates the way the system does, for tests that play a rollout without a workflow.

Waves open only after a verified promotion (a person's authorised promote, or an automatic one re-checked by
`wave_promote`), and a person's action needs a token minted for them; these helpers do exactly that.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db.models import F
from django.utils import timezone

from devices.models import Device
from ota_project.roles import Role
from rollouts import rollout_services as steps
from rollouts.action_tokens import action_token_mint
from rollouts.choices import WaveStatus
from rollouts.deployment_services import deployment_offer
from rollouts.models import Deployment, Rollout, Wave
from tests.factories import UserFactory


def token_for(actor: User, rollout: Rollout, action: str, wave_index: int = -1) -> str:
    """The proof the API would mint for `actor` (an authenticated person) to take `action`."""
    return action_token_mint(
        actor_id=actor.pk, rollout_id=rollout.pk, action=action, wave_index=wave_index, now=timezone.now()
    )


def authorize(rollout: Rollout, action: str, actor: User, *, wave_index: int = -1, reason: str = "test") -> None:
    """A person's action through the authorize step, with a freshly minted token."""
    steps.human_action_authorize(
        rollout_id=rollout.pk,
        action=action,
        actor_id=actor.pk,
        reason=reason,
        wave_index=wave_index,
        token=token_for(actor, rollout, action, wave_index),
    )


def end_soak(rollout: Rollout, wave_index: int) -> None:
    """Move the wave's opening back past its soak (the tests do not wait out soak times)."""
    soak = timedelta(seconds=rollout.approved_plan.waves[wave_index].soak_seconds)
    Wave.objects.filter(rollout=rollout, index=wave_index).update(started_at=F("started_at") - soak)


def promote(rollout: Rollout, wave_index: int, actor: User | None = None) -> None:
    """An operator promotes the opened wave once its soak is over."""
    end_soak(rollout, wave_index)
    operator = actor or UserFactory.create(roles=[Role.OPERATOR])
    authorize(rollout, "promote", operator, wave_index=wave_index, reason="promoted in a test")


def assign_through(rollout: Rollout, last_wave: int) -> None:
    """Open waves 0..last_wave, an operator promoting each one before the next opens."""
    promoted = set(Wave.objects.filter(rollout=rollout, status=WaveStatus.PROMOTED).values_list("index", flat=True))
    for index in range(last_wave + 1):
        if index and index - 1 not in promoted:
            promote(rollout, index - 1)
        steps.wave_assign(rollout_id=rollout.pk, wave_index=index)


def abort(rollout: Rollout, actor: User | None = None, *, reason: str = "aborted in a test") -> None:
    """An operator aborts (recorded with their proof), then the rollout finishes as aborted, as the workflow does."""
    operator = actor or UserFactory.create(roles=[Role.OPERATOR])
    authorize(rollout, "abort", operator, reason=reason)
    steps.rollout_finish(rollout_id=rollout.pk, outcome="aborted", reason=reason, actor_id=operator.pk)


def expect_offer(device: Device, *, now: datetime | None = None) -> Deployment:
    """The deployment `deployment_offer` gives `device` now, for a test that expects the device to be offered work
    (fails the test, naming the device, when nothing is offered)."""
    offered = deployment_offer(device_id=device.pk, now=now)
    assert offered is not None, f"nothing was offered to {device.serial}"
    return offered
