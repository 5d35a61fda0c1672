"""Rollout history for the embedded demo: one completed rollout and one halted and rolled back.

The demo is seeded before the Temporal dev server starts, so these two rollouts are played step by step through
the same services the RolloutWorkflow's activities call (assign, health, phase, halt, rollback, finish), with the
devices' reports going through the device services. No workflow exists for them: their dashboards show the
database projection. Rollouts started in the running demo are real workflows.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from django.db.models import F
from django.utils import timezone

from rollouts import rollout_services
from rollouts.action_tokens import action_token_mint
from rollouts.choices import DEPLOYMENT_TERMINAL
from rollouts.demo.playback import FAIL_BOOT, HAPPY, play
from rollouts.deployment_services import deployment_offer
from rollouts.health import wave_plan_of
from rollouts.models import Rollout, Wave
from workflows import policy
from workflows.types import Gate, Phase, PhaseChange, Update, Verdict, WaveHealth


def _devices_poll(rollout: Rollout, fails: set[int]) -> None:
    """Every device with open work checks in once and plays its update (devices in `fails` fail their boot)."""
    device_ids = (
        rollout.deployments.exclude(status__in=DEPLOYMENT_TERMINAL).values_list("device_id", flat=True).distinct()
    )
    for device_id in list(device_ids):
        pending = rollout.deployments.filter(device_id=device_id).select_related("device").first()
        if pending is None:
            continue
        offered = deployment_offer(device_id=pending.device_id)
        if offered is not None:
            if device_id in fails and offered.kind == "update":
                play(offered, FAIL_BOOT, failure_detail="boot health check failed: modem_attach")
            else:
                play(offered, HAPPY)


def _run_wave(rollout: Rollout, index: int, fails: set[int]) -> WaveHealth:
    rollout_services.wave_assign(rollout_id=rollout.pk, wave_index=index)
    _devices_poll(rollout, fails)
    return rollout_services.wave_health(rollout_id=rollout.pk, wave_index=index)


def _soak_over(rollout: Rollout, index: int) -> None:
    """History playback: the wave opened a soak earlier, so the gate may be judged now (nothing waits in the demo)."""
    soak = timedelta(seconds=rollout.approved_plan.waves[index].soak_seconds)
    Wave.objects.filter(rollout=rollout, index=index).update(started_at=F("started_at") - soak)


def _operator_decides(rollout: Rollout, operator: Any, action: str, reason: str, wave_index: int = -1) -> None:
    """An operator's decision as the workflow's authorize step takes it: with a proof minted for them."""
    token = action_token_mint(
        actor_id=operator.pk, rollout_id=rollout.pk, action=action, wave_index=wave_index, now=timezone.now()
    )
    rollout_services.human_action_authorize(
        rollout_id=rollout.pk, action=action, actor_id=operator.pk, reason=reason, wave_index=wave_index, token=token
    )


def completed_rollout(*, operator: Any, change: Any) -> Rollout:
    """Start `change` and play every wave to success (manual gates promoted by the operator)."""
    rollout = rollout_services.rollout_start(actor=operator, change=change, start_workflow=False)
    waves = rollout.approved_plan.waves
    for index, wave in enumerate(waves):
        health = _run_wave(rollout, index, fails=set())
        _soak_over(rollout, index)
        if index == len(waves) - 1:
            break
        passed = policy.wave_verdict(health, wave_plan_of(wave), soak_done=True) == Verdict.PASS
        if wave.promotes_automatically and passed:
            rollout_services.wave_promote(rollout_id=rollout.pk, wave_index=index)
            continue
        # A manual gate, or too little evidence (inconclusive): an operator decides.
        gate = Gate.PROMOTION if passed else Gate.INCONCLUSIVE
        reason = f"Wave {wave.name} {'passed' if passed else 'is inconclusive'}; waiting for an operator."
        rollout_services.rollout_phase(PhaseChange(rollout.pk, Phase.AWAITING_PROMOTION, index, gate, reason, health))
        _operator_decides(rollout, operator, Update.PROMOTE, "KPIs nominal", wave_index=index)
    rollout_services.rollout_finish(
        rollout_id=rollout.pk, outcome=Phase.COMPLETED, reason=f"All {len(waves)} waves passed."
    )
    return rollout


def halted_rollout(*, operator: Any, change: Any, failing_share: float, seed: int) -> Rollout:
    """Start `change`, let a share of the pilot fail its boot check, halt, roll back every device that took it."""
    rollout = rollout_services.rollout_start(actor=operator, change=change, start_workflow=False)
    rollout_services.wave_assign(rollout_id=rollout.pk, wave_index=0)
    pilot = sorted(rollout.deployments.values_list("device_id", flat=True))
    fails = set(random.Random(seed).sample(pilot, max(1, round(len(pilot) * failing_share))))
    _devices_poll(rollout, fails)
    health = rollout_services.wave_health(rollout_id=rollout.pk, wave_index=0)
    plan = rollout.approved_plan
    wave = plan.waves[0]
    reason = (
        f"Wave {wave.name} failed: {health.failures} of {health.finished} finished devices failed "
        f"(threshold {wave.failure_threshold:.0%})."
    )
    rollout_services.rollout_halt(rollout_id=rollout.pk, wave_index=0, reason=reason)
    if not plan.rolls_back:
        _operator_decides(rollout, operator, Update.ROLLBACK, "pilot boot failures")
    rollout_services.rollback_assign(rollout_id=rollout.pk)
    _devices_poll(rollout, fails=set())
    back = rollout_services.rollback_health(rollout_id=rollout.pk)
    rollout_services.rollout_finish(
        rollout_id=rollout.pk,
        outcome=Phase.ROLLED_BACK,
        reason=f"Rolled back: {back.succeeded} of {back.total} devices restored. Cause: {reason}",
    )
    return rollout
