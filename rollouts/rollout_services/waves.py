"""The steps the RolloutWorkflow takes per wave: wait for its window, assign it, measure its health, project the
gate, promote it, halt. Each is idempotent (activities are retried) and re-checks the database."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.db import transaction
from django.utils import timezone

from approvals.choices import ChangeStatus
from approvals.plans import Pacing
from approvals.selectors import freeze_end
from devices.models import Region
from devices.scope import scope_devices
from ota_project.errors import Conflict
from rollouts.assignment import NewDeployment, insert_deployments
from rollouts.choices import (
    DEADLINE_PHASE,
    WAVE_STATUS_FOR_GATE,
    DeploymentKind,
    DeploymentStatus,
    RolloutStatus,
    WaveStatus,
)
from rollouts.cohorts import Target, next_cohort, order_targets
from rollouts.deployment_services import breaker_tripped, wave_breaker_check
from rollouts.eligibility import release_refusal
from rollouts.health import deployment_health, health_counts, wave_plan_of
from rollouts.models import Deployment, HealthSample, Rollout, Wave
from rollouts.rollout_alerts import alert_rollout_halted, alert_wave_held
from rollouts.signal_gates import signal_record_due, wave_signals, with_signals
from rollouts.step_keys import HOLD_GATES, verdict_step_key
from rollouts.transitions import deployment_transition, wave_transition
from rollouts.windows import blackout_until, region_next_opening
from workflows import policy
from workflows.types import Gate, PhaseChange, Update, Verdict, WaveAssignment, WaveHealth

if TYPE_CHECKING:
    pass
from rollouts.rollout_services.shared import SYSTEM, _forged, _person_decided, _record, _transition
from rollouts.rollout_services.start import _targets


def _wave(rollout_id: int, wave_index: int) -> Wave:
    return Wave.objects.select_related("rollout__change", "rollout__release").get(
        rollout_id=rollout_id, index=wave_index
    )


def wave_window_wait(*, rollout_id: int, wave_index: int) -> tuple[int, str]:
    """Seconds until the wave may start (0: now) and why: change freezes, blackouts, then the targeted regions'
    windows. A freeze that begins while the rollout runs holds its next wave until the freeze ends."""
    rollout = Rollout.objects.select_related("change").get(pk=rollout_id)
    now = timezone.now()
    frozen = freeze_end(rollout.change, at=now)
    if frozen is not None:
        end, words = frozen
        return max(1, int((end - now).total_seconds()) + 1), words
    plan = rollout.approved_plan
    blackout = blackout_until(plan, now)
    if blackout:
        end, reason = blackout
        return max(1, int((end - now).total_seconds()) + 1), f"blackout until {end.isoformat()}: {reason}"
    if not plan.maintenance_windows:
        return 0, ""
    region_ids = scope_devices(rollout.change.scope).values("region_id")
    openings = [
        region_next_opening(plan, code, zone, now)
        for code, zone in Region.objects.filter(pk__in=region_ids).values_list("code", "time_zone")
    ]
    known_openings = [o for o in openings if o is not None]
    if not known_openings:
        return 3600, "no maintenance window opens for the targeted regions within a week"
    first = min(known_openings)
    if first <= now:
        return 0, ""
    return max(1, int((first - now).total_seconds()) + 1), f"next maintenance window opens {first.isoformat()}"


def _pacing_times(
    pacing: Pacing, cohort: list[Target], region_codes: dict[int, str], start: datetime
) -> list[datetime]:
    rate = pacing.limits.rate
    counters: dict[int, int] = {}
    times = []
    for position, target in enumerate(cohort):
        region_id = target.stratum[1]
        region_rate = pacing.region(region_codes.get(region_id, "")).rate
        offsets = [0.0]
        if rate:
            offsets.append(position / rate)
        if region_rate:
            offsets.append(counters.get(region_id, 0) / region_rate)
        counters[region_id] = counters.get(region_id, 0) + 1
        times.append(start + timedelta(minutes=max(offsets)))
    return times


def _require_previous_wave_promoted(rollout: Rollout, wave_index: int) -> None:
    """Only a verified promotion opens the next wave: an automatic pass re-checked by `wave_promote`, or a
    person's promote at a gate (`human_action_authorize`). A forged or replayed workflow cannot skip a gate."""
    if wave_index == 0:
        return
    previous = Wave.objects.filter(rollout=rollout, index=wave_index - 1).values_list("status", flat=True).first()
    if previous != WaveStatus.PROMOTED:
        raise _forged(
            rollout,
            f"Wave {wave_index + 1} may not start: wave {wave_index} was not promoted (it is {previous or 'missing'}).",
        )


WAVE_OPENABLE = (RolloutStatus.SCHEDULED, RolloutStatus.RUNNING, RolloutStatus.AWAITING_PROMOTION)


@transaction.atomic
def wave_assign(*, rollout_id: int, wave_index: int) -> WaveAssignment:
    """Open a wave: create its deployments in bulk and show the rollout running it, in one transaction.

    Idempotent (a wave is opened once; a retry returns the same opening). The soak clock starts at `opened_at`,
    when devices can really be offered the release. Devices that no longer qualify (hardware model, anti-rollback)
    or already hold an active deployment are recorded as skipped with the reason, never silently dropped.
    """
    rollout = Rollout.objects.select_for_update(of=("self",)).select_related("change", "release").get(pk=rollout_id)
    wave = Wave.objects.select_for_update().get(rollout=rollout, index=wave_index)
    if wave.started_at is not None:
        return WaveAssignment(wave_index, wave.assigned_devices, wave.started_at.isoformat())
    _require_previous_wave_promoted(rollout, wave_index)
    if rollout.status not in WAVE_OPENABLE or breaker_tripped(rollout.pk):
        raise Conflict(f"A wave cannot start while the rollout is {rollout.status}.", code="invalid_transition")
    if rollout.change.status != ChangeStatus.IMPLEMENTING:
        raise Conflict(f"The change is {rollout.change.status}; no wave starts.", code="not_implementing")
    plan = rollout.approved_plan
    wave_plan = plan.waves[wave_index]
    last = wave_index == len(plan.waves) - 1
    assigned = set(rollout.deployments.values_list("device_id", flat=True))
    ordered = order_targets(rollout.pk, _targets(rollout.change), stratify=bool(wave_plan.stratify))
    size = len(ordered) if last else wave.planned_devices
    cohort = next_cohort(ordered, already_assigned=assigned, size=size, pilot_only=wave_plan.is_pilot)
    now = timezone.now()
    region_codes = dict(Region.objects.values_list("pk", "code"))
    not_before = _pacing_times(plan.pacing, cohort, region_codes, now)
    download = timedelta(seconds=plan.deadlines.download_seconds)
    supported = set(rollout.release.hardware_models.values_list("pk", flat=True))
    rows = []
    for target, start in zip(cohort, not_before, strict=True):
        ineligible = release_refusal(
            rollout.release,
            supported_model_ids=supported,
            hardware_model_id=target.stratum[0],
            committed_counter=target.committed_counter,
        )
        status = DeploymentStatus.SKIPPED if ineligible else DeploymentStatus.PENDING
        rows.append(
            NewDeployment(
                rollout.pk,
                wave.pk,
                target.device_id,
                rollout.release_id,
                DeploymentKind.UPDATE,
                start,
                None if ineligible else start + download,
                status,
                f"skipped: {ineligible}" if ineligible else "",
            )
        )
    busy = insert_deployments(rows)
    skipped = sum(1 for row in rows if row.status == DeploymentStatus.SKIPPED) + len(busy)
    if wave_transition(waves=[wave.pk], to=WaveStatus.RUNNING, assigned_devices=len(cohort), started_at=now) != 1:
        raise Conflict(f"Wave {wave.name} is {wave.status}; it cannot open.", code="invalid_transition")
    _transition(
        rollout,
        RolloutStatus.RUNNING,
        actor=None,
        action="rollout.running",
        reason=f"Wave {wave.name} opened.",
        current_wave=wave_index,
        gate="",
        status_reason=f"Wave {wave.name} assigned to {len(cohort) - skipped} devices; soaking.",
    )
    _record(
        None,
        rollout,
        "rollout.wave_assign",
        after={"wave": wave_index, "devices": len(cohort), "skipped": skipped, "opened_at": now.isoformat()},
    )
    return WaveAssignment(wave_index, len(cohort), now.isoformat())


def _expire_deadlines(deployments: Any, now: datetime) -> int:
    expired = 0
    for status, phase in DEADLINE_PHASE.items():
        expired += deployment_transition(
            deployments=deployments.filter(status=status, deadline_at__lt=now),
            to=DeploymentStatus.TIMED_OUT,
            now=now,
            failure_class=phase,
        )
    return expired


def finished_rollouts_expire_deadlines(*, now: datetime | None = None) -> int:
    """Time out in-flight deployments of finished rollouts whose deadline passed (no workflow watches them any more);
    idempotent, run periodically by celery beat."""
    finished = (RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK)
    return _expire_deadlines(Deployment.objects.filter(rollout__status__in=finished), now or timezone.now())


def _health_sample(rollout_id: int, wave_index: int, kind: str, health: WaveHealth) -> None:
    """Keep the health history for charts: a new row only when the counts changed since the last evaluation.

    Retried activities and quiet soaks only move the last row's `taken_at`, so rows grow with changes, not ticks.
    """
    now = timezone.now()
    counts = health_counts(health)
    last = (
        HealthSample.objects.filter(rollout_id=rollout_id, kind=kind, wave_index=wave_index)
        .order_by("-first_at", "-id")
        .first()
    )
    if last is not None and last.counts == counts:
        HealthSample.objects.filter(pk=last.pk).update(taken_at=now, evaluations=last.evaluations + 1)
        return
    rate = health.failures / health.finished if health.finished else None
    HealthSample.objects.create(
        rollout_id=rollout_id,
        wave_index=wave_index,
        kind=kind,
        first_at=now,
        taken_at=now,
        counts=counts,
        failure_rate=rate,
    )


@transaction.atomic
def wave_health(*, rollout_id: int, wave_index: int) -> WaveHealth:
    """Expire missed deadlines (timed_out counts as a failure), count the wave's update deployments, and trip the
    wave's breaker when they crossed the failure threshold (the offer path refuses the release from then on)."""
    Rollout.objects.select_for_update(of=("self",)).filter(pk=rollout_id).first()  # lock order: rollout first
    wave = _wave(rollout_id, wave_index)
    deployments = wave.deployments.filter(kind=DeploymentKind.UPDATE)
    now = timezone.now()
    _expire_deadlines(deployments, now)
    wave_breaker_check(wave_id=wave.pk, now=now, system_actor=SYSTEM)
    health = deployment_health(deployments)
    # The health gates on post-update signals: a few aggregate rows, whatever the wave's size.
    report = wave_signals(rollout=wave.rollout, wave=wave)
    Wave.objects.filter(pk=wave.pk).update(
        health=health_counts(health), signals=report.to_json() if report is not None else None
    )
    Rollout.objects.filter(pk=rollout_id).update(last_health=health_counts(health))
    _health_sample(rollout_id, wave_index, HealthSample.Kind.WAVE, health)
    if report is not None and signal_record_due(report):
        # The verdict that halts the wave, with its numbers, once per wave (the halt record follows it).
        _record(
            None,
            wave.rollout,
            "rollout.signal_gate",
            after={"wave": wave_index, **report.to_json()},
            reason=f"Wave {wave.name} failed its health gates: {report.reason}",
            step_key=verdict_step_key(rollout_id, wave_index, "signal_gate", report.verdict),
        )
    return with_signals(health, report)


def _promoted_frontier(rollout: Rollout) -> int:
    """The furthest wave the rollout may be at: the first wave not promoted by a verified step."""
    statuses = list(Wave.objects.filter(rollout=rollout).order_by("index").values_list("status", flat=True))
    for index, status in enumerate(statuses):
        if status != WaveStatus.PROMOTED:
            return index
    return len(statuses)


@transaction.atomic
def rollout_phase(change: PhaseChange) -> None:
    """Project the workflow's phase, wave and gate into the database (records only real status changes, and a
    hold verdict once per wave and gate: rollouts.step_keys).

    Idempotent: a re-projection after a crash or continue-as-new writes the same state again. A projection can
    never put the rollout past a wave that was not promoted by a verified step.
    """
    rollout = Rollout.objects.select_for_update(of=("self",)).get(pk=change.rollout_id)
    if change.wave_index > _promoted_frontier(rollout):
        raise _forged(rollout, f"The workflow claims wave {change.wave_index}, which no promotion opened.")
    updates: dict[str, Any] = {"current_wave": change.wave_index, "gate": change.gate, "status_reason": change.reason}
    if change.health is not None:
        updates["last_health"] = health_counts(change.health)
    _transition(rollout, change.phase, actor=None, action=f"rollout.{change.phase}", reason=change.reason, **updates)
    wave_status = WAVE_STATUS_FOR_GATE.get(change.gate)
    if wave_status:
        moved = wave_transition(
            waves=Wave.objects.filter(rollout=rollout, index=change.wave_index),
            to=wave_status,
            verdict_at=timezone.now(),
        )
        if moved and change.gate in HOLD_GATES:
            # The gate verdict "hold" itself, once per (wave, gate) however often it is projected again.
            evidence: dict[str, Any] = {
                "wave": change.wave_index,
                "gate": change.gate,
                "counts": health_counts(change.health) if change.health is not None else None,
            }
            # The health gates' numbers as last read (only when the plan names gates).
            signals = (
                Wave.objects.filter(rollout=rollout, index=change.wave_index).values_list("signals", flat=True).first()
            )
            if signals is not None:
                evidence["signals"] = signals
            _record(
                None,
                rollout,
                "rollout.hold",
                after=evidence,
                reason=change.reason,
                step_key=verdict_step_key(rollout.pk, change.wave_index, "hold", change.gate),
            )
            if change.gate == Gate.INCONCLUSIVE:
                alert_wave_held(rollout=rollout, wave_index=change.wave_index, reason=change.reason, evidence=evidence)


@transaction.atomic
def wave_promote(*, rollout_id: int, wave_index: int) -> bool:
    """Promote a wave automatically: re-checked here from the database (an `auto` wave whose soak is over and whose
    verdict is a pass, no breaker, not paused), recorded once with its evidence; idempotent."""
    rollout = Rollout.objects.select_for_update(of=("self",)).get(pk=rollout_id)
    wave = Wave.objects.select_for_update().get(rollout=rollout, index=wave_index)
    if wave.status == WaveStatus.PROMOTED:
        return False
    plan = rollout.approved_plan.waves[wave_index]
    if not plan.promotes_automatically:
        raise _forged(rollout, f"Wave {wave.name} is promoted only by a person (manual gate).")
    # The signal gates are read again here: a promotion the workflow asks for is re-judged on the database's numbers.
    report = wave_signals(rollout=rollout, wave=wave)
    health = with_signals(deployment_health(wave.deployments.filter(kind=DeploymentKind.UPDATE)), report)
    soak_done = wave.started_at is not None and timezone.now() >= wave.started_at + timedelta(seconds=plan.soak_seconds)
    verdict = policy.wave_verdict(health, wave_plan_of(plan), soak_done=soak_done)
    if verdict != Verdict.PASS or wave.breaker_tripped_at is not None or rollout.status not in WAVE_OPENABLE:
        raise _forged(rollout, f"Wave {wave.name} has not passed (verdict {verdict}, rollout {rollout.status}).")
    wave_transition(waves=[wave.pk], to=WaveStatus.PROMOTED, verdict_at=timezone.now())
    _record(
        None,
        rollout,
        "rollout.promote_auto",
        after={
            "wave": wave_index,
            "counts": health_counts(health),
            "signals": report.to_json() if report is not None else None,
        },
        reason=(
            f"Wave {wave.name} passed and was promoted automatically: {health.succeeded} of {health.total} devices "
            f"succeeded (needs {plan.success_threshold:.0%}), {health.failures} failed."
        ),
        step_key=verdict_step_key(rollout.pk, wave_index, "promote"),
    )
    return True


def _wave_failed(rollout: Rollout, wave: Wave, now: datetime) -> bool:
    if wave.breaker_tripped_at is not None:
        return True
    plan = rollout.approved_plan.waves[wave.index]
    report = wave_signals(rollout=rollout, wave=wave)
    health = with_signals(deployment_health(wave.deployments.filter(kind=DeploymentKind.UPDATE)), report)
    soak_done = wave.started_at is not None and now >= wave.started_at + timedelta(seconds=plan.soak_seconds)
    return policy.wave_verdict(health, wave_plan_of(plan), soak_done=soak_done) == Verdict.FAIL


@transaction.atomic
def rollout_halt(*, rollout_id: int, wave_index: int, reason: str) -> int:
    """Halt at once: the release is offered nowhere any more (undelivered deployments are cancelled)."""
    rollout = Rollout.objects.select_for_update(of=("self",)).get(pk=rollout_id)
    now = timezone.now()
    wave = Wave.objects.filter(rollout=rollout, index=wave_index).first()
    # Stopped when a person's recorded abort or rollback ended the rollout while its gate (judged by the database,
    # before anything is cancelled) and its breakers had not failed it; failed otherwise (gate, breaker, a step
    # that failed for good), which is also what lets the abort policy roll back.
    by_person = _person_decided(rollout, Update.ABORT) or _person_decided(rollout, Update.ROLLBACK)
    ended = (
        WaveStatus.STOPPED
        if by_person and wave is not None and not _wave_failed(rollout, wave, now)
        else WaveStatus.FAILED
    )
    # The table cancels only deployments not yet installing; those installing finish and report.
    cancelled = deployment_transition(
        deployments=rollout.deployments.filter(kind=DeploymentKind.UPDATE),
        to=DeploymentStatus.CANCELLED,
        now=now,
        reason="rollout halted",
    )
    if wave is not None:
        wave_transition(waves=[wave.pk], to=ended, verdict_at=now)
    if rollout.status in (
        RolloutStatus.HALTED,
        RolloutStatus.ROLLING_BACK,
        RolloutStatus.ABORTED,
        RolloutStatus.ROLLED_BACK,
    ):
        return cancelled
    _transition(
        rollout,
        RolloutStatus.HALTED,
        actor=None,
        action="rollout.halt",
        reason=reason,
        step_key=verdict_step_key(rollout.pk, wave_index, "halt"),
        halted_at=now,
        current_wave=wave_index,
        status_reason=reason,
    )
    _record(
        None,
        rollout,
        "rollout.stop_offering",
        after={"cancelled_deployments": cancelled},
        step_key=verdict_step_key(rollout.pk, wave_index, "halt", "stop_offering"),
    )
    if ended == WaveStatus.FAILED and wave is not None:
        alert_rollout_halted(rollout=rollout, wave_index=wave_index, wave_name=wave.name, reason=reason)
    return cancelled
