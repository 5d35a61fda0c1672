"""Rollout life cycle: start (people), the steps the workflow's activities take, and human actions.

Each function is one atomic action that names its actor (a person, or the workflow as `system:temporal`)
and writes the decision record in the same transaction. Workflow-facing steps are idempotent: Temporal
retries activities, so repeating a step must change nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from approvals import services as change_services
from approvals.audit.models import DecisionRecord
from approvals.audit.records import record_decision
from approvals.audit.security import SecurityEventKind, security_event
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.plans import Pacing, plan_hash, wave_sizes
from approvals.selectors import change_start_refusal
from devices.models import Region
from devices.scope import scope_devices
from ota_project.db import atomic_with_retry
from ota_project.errors import Conflict, DomainError, InvalidInput, NotPermitted
from ota_project.roles import operator_not_author_refusal, roles_of
from rollouts.action_tokens import action_token_check, action_token_mint, action_token_spend, action_token_spent
from rollouts.assignment import NewDeployment, insert_deployments
from rollouts.choices import (
    DEADLINE_PHASE,
    DEPLOYMENT_FAILURES,
    ROLLOUT_ACTIVE,
    ROLLOUT_TRANSITIONS,
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
from rollouts.step_keys import HOLD_GATES, human_action_step_key, rollback_step_key, verdict_step_key
from rollouts.transitions import deployment_transition, wave_transition
from rollouts.windows import blackout_until, region_next_opening
from workflows import policy
from workflows.policy import HUMAN_ACTIONS
from workflows.types import PhaseChange, RolloutInput, Update, Verdict, WaveAssignment, WaveHealth

if TYPE_CHECKING:
    from temporalio.common import TypedSearchAttributes

    from workflows.types import RolloutProgress as WorkflowStatus

SYSTEM = "temporal"


def _record(actor: User | None, rollout: Rollout, action: str, **kwargs: Any) -> None:
    record_decision(
        actor=actor, action=action, object_type="rollout", object_id=rollout.pk, system_actor=SYSTEM, **kwargs
    )


def _transition(
    rollout: Rollout,
    to: str,
    *,
    actor: User | None,
    action: str,
    reason: str = "",
    step_key: str | None = None,
    **updates: Any,
) -> bool:
    """The one guarded status change; False (and nothing written) when already in `to`; `step_key` makes its
    record idempotent for a decision the workflow may take again (see rollouts.step_keys)."""
    if rollout.status == to:
        if updates:
            Rollout.objects.filter(pk=rollout.pk).update(**updates)
        return False
    if to not in ROLLOUT_TRANSITIONS[rollout.status]:
        raise Conflict(f"A rollout that is {rollout.status} cannot become {to}.", code="invalid_transition")
    changed = Rollout.objects.filter(pk=rollout.pk, status=rollout.status).update(
        status=to, updated_at=timezone.now(), **updates
    )
    if changed != 1:
        raise Conflict("The rollout changed at the same time; try again.")
    _record(
        actor,
        rollout,
        action,
        before={"status": rollout.status},
        after={"status": to},
        reason=reason,
        step_key=step_key,
    )
    rollout.status = to
    return True


def _targets(change: ChangeRequest) -> list[Target]:
    devices = scope_devices(change.scope).values_list(
        "pk", "serial", "hardware_model_id", "region_id", "installed_release_counter", "reported_release_counter"
    )
    pilots = set(scope_devices(change.scope).filter(tags__name="pilot").values_list("pk", flat=True))
    return [
        Target(pk, serial, (model, region), pk in pilots, max(installed or 0, reported or 0))
        for pk, serial, model, region, installed, reported in devices
    ]


def _conflicting_rollouts(change: ChangeRequest) -> list[str]:
    mine = scope_devices(change.scope).values("pk")
    clashes = []
    for other in Rollout.objects.filter(status__in=ROLLOUT_ACTIVE).select_related("change"):
        overlap = scope_devices(other.change.scope).filter(pk__in=mine).count()
        if overlap:
            clashes.append(f"rollout-{other.pk} (change {other.change_id}) shares {overlap} devices")
    return clashes


# Any 64-bit number will do; it only has to be the same for every process that starts rollouts.
_START_LOCK_KEY = 0x07A_5747_0001


def _serialise_starts() -> None:
    """One rollout start at a time (PostgreSQL advisory lock until commit; SQLite serialises writers itself)."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_START_LOCK_KEY])


@atomic_with_retry()
def rollout_start(*, actor: User, change: ChangeRequest, start_workflow: bool = True) -> Rollout:
    """Start the rollout of an approved change: an operator who is not its author, inside its window, no overlap.

    Starts are serialised (one advisory lock, taken first), so two operators starting overlapping changes at the
    same instant cannot both pass the overlap check; the partial unique index on active deployments backs it up.
    `start_workflow=False` only records the start (the demo history plays its steps through the services)."""
    with _refusals_recorded(
        SecurityEventKind.START_REFUSED, "rollouts.rollout_start", actor=actor, subject=f"change:{change.pk}"
    ):
        return _rollout_start(actor=actor, change=change, start_workflow=start_workflow)


def _rollout_start(*, actor: User, change: ChangeRequest, start_workflow: bool) -> Rollout:
    _serialise_starts()
    change = ChangeRequest.objects.select_for_update(of=("self",)).get(pk=change.pk)
    # Who may start, and when: one rule shared with the change page and the start page.
    refusal = change_start_refusal(actor, change)
    if refusal is not None:
        raise refusal
    cannot_roll_back = change_services.rollback_plan_errors(change)
    if cannot_roll_back:
        raise Conflict(
            "The change cannot roll back: " + " ".join(cannot_roll_back),
            code="cannot_roll_back",
            fields={"rollback_release": cannot_roll_back},
        )
    clashes = _conflicting_rollouts(change)
    if clashes:
        raise Conflict(
            "Another active rollout targets some of the same devices: " + "; ".join(clashes) + ".", code="conflict"
        )
    targets = _targets(change)
    plan = change.plan
    if plan is None:
        raise Conflict("The change has no rollout plan.", code="no_plan")
    rollout = Rollout.objects.create(
        change=change,
        release=change.release,
        rollback_release=change.rollback_release,
        plan=change.rollout_plan,  # exactly the JSON the approvals' plan hash covers
        plan_hash=plan_hash(change.rollout_plan),
        started_by=actor,
    )
    sizes = wave_sizes(plan.waves, total=len(targets), pilots=sum(t.pilot for t in targets))
    Wave.objects.bulk_create(
        Wave(rollout=rollout, index=i, name=w.name, planned_devices=sizes[i]) for i, w in enumerate(plan.waves)
    )
    change_services.change_mark_implementing(actor=actor, change=change)
    _record(
        actor,
        rollout,
        "rollout.start",
        revision=change.revision,
        after={
            "change": change.pk,
            "release": rollout.release.version,
            "devices": len(targets),
            "wave_sizes": sizes,
            "plan_hash": rollout.plan_hash,
        },
    )
    if start_workflow:
        transaction.on_commit(lambda: _start_workflow(rollout))
    return rollout


def _start_workflow(rollout: Rollout) -> None:
    from django.conf import settings

    if not settings.TEMPORAL_ENABLED:
        return
    from workflows.client import TemporalUnavailable, start_rollout_workflow

    try:
        start_rollout_workflow(workflow_input(rollout), search_attributes_for(rollout))
    except TemporalUnavailable as err:
        raise TemporalUnavailable(
            f"Rollout {rollout.pk} is recorded, but its workflow could not be started yet ({err.message}); "
            "the worker starts it as soon as Temporal is reachable."
        ) from err


def rollout_workflows_ensure(*, older_than_seconds: int = 30) -> list[int]:
    """Start the workflow of every rollout still `scheduled` a while after its start (Temporal was unreachable then).

    Idempotent: the workflow id is `rollout-<pk>` and a start of a running or finished workflow is a no-op. The
    worker calls this on start and then periodically; raises TemporalUnavailable while Temporal is down.
    """
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    waiting = Rollout.objects.filter(status=RolloutStatus.SCHEDULED, created_at__lte=cutoff).select_related(
        "change", "release"
    )
    started = []
    for rollout in waiting.order_by("pk"):
        _start_workflow(rollout)
        started.append(rollout.pk)
    return started


def workflow_input(rollout: Rollout) -> RolloutInput:
    """The RolloutWorkflow input for a rollout, from its approved plan (the one RolloutPlan -> workflow mapping)."""
    plan = rollout.approved_plan
    return RolloutInput(
        rollout_id=rollout.pk,
        change_id=rollout.change_id,
        author_id=rollout.change.author_id,
        waves=[wave_plan_of(w) for w in plan.waves],
        abort_policy=plan.abort_policy,
        monitor_interval_seconds=plan.monitor_interval_seconds,
    )


def search_attributes_for(rollout: Rollout) -> TypedSearchAttributes:
    """What operators filter on in the Temporal UI: change, release, phase, wave, paused."""
    from workflows.search_attributes import rollout_search_attributes

    return rollout_search_attributes(
        change_id=rollout.change_id, release_version=rollout.release.version, phase=rollout.status, wave=0, paused=False
    )


# --- Steps taken by the workflow's activities -------------------------------------------------------------------


def _wave(rollout_id: int, wave_index: int) -> Wave:
    return Wave.objects.select_related("rollout__change", "rollout__release").get(
        rollout_id=rollout_id, index=wave_index
    )


def wave_window_wait(*, rollout_id: int, wave_index: int) -> tuple[int, str]:
    """Seconds until the wave may start (0: now) and why: blackouts, then the targeted regions' windows."""
    rollout = Rollout.objects.get(pk=rollout_id)
    now = timezone.now()
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
            f"Wave {wave_index} may not start: wave {wave_index - 1} was not promoted (it is {previous or 'missing'}).",
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
    Wave.objects.filter(pk=wave.pk).update(health=health_counts(health))
    Rollout.objects.filter(pk=rollout_id).update(last_health=health_counts(health))
    _health_sample(rollout_id, wave_index, HealthSample.Kind.WAVE, health)
    return health


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
            _record(
                None,
                rollout,
                "rollout.hold",
                after={
                    "wave": change.wave_index,
                    "gate": change.gate,
                    "counts": health_counts(change.health) if change.health is not None else None,
                },
                reason=change.reason,
                step_key=verdict_step_key(rollout.pk, change.wave_index, "hold", change.gate),
            )


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
    health = deployment_health(wave.deployments.filter(kind=DeploymentKind.UPDATE))
    soak_done = wave.started_at is not None and timezone.now() >= wave.started_at + timedelta(seconds=plan.soak_seconds)
    verdict = policy.wave_verdict(health, wave_plan_of(plan), soak_done=soak_done)
    if verdict != Verdict.PASS or wave.breaker_tripped_at is not None or rollout.status not in WAVE_OPENABLE:
        raise _forged(rollout, f"Wave {wave.name} has not passed (verdict {verdict}, rollout {rollout.status}).")
    wave_transition(waves=[wave.pk], to=WaveStatus.PROMOTED, verdict_at=timezone.now())
    _record(
        None,
        rollout,
        "rollout.promote_auto",
        after={"wave": wave_index, "counts": health_counts(health)},
        reason=(
            f"Wave {wave.name} passed and was promoted automatically: {health.succeeded} of {health.total} devices "
            f"succeeded (needs {plan.success_threshold:.0%}), {health.failures} failed."
        ),
        step_key=verdict_step_key(rollout.pk, wave_index, "promote"),
    )
    return True


@transaction.atomic
def rollout_halt(*, rollout_id: int, wave_index: int, reason: str) -> int:
    """Halt at once: the release is offered nowhere any more (undelivered deployments are cancelled)."""
    rollout = Rollout.objects.select_for_update(of=("self",)).get(pk=rollout_id)
    now = timezone.now()
    # The table cancels only deployments not yet installing; those installing finish and report.
    cancelled = deployment_transition(
        deployments=rollout.deployments.filter(kind=DeploymentKind.UPDATE),
        to=DeploymentStatus.CANCELLED,
        now=now,
        reason="rollout halted",
    )
    wave_transition(waves=Wave.objects.filter(rollout=rollout, index=wave_index), to=WaveStatus.FAILED, verdict_at=now)
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
    return cancelled


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


def _person_decided(rollout: Rollout, action: str, actor_id: int | None = None) -> bool:
    """True when the decision record holds this person's (or any person's) authorised action on the rollout."""
    records = DecisionRecord.objects.filter(
        object_type="rollout", object_id=str(rollout.pk), action=f"rollout.{action}", actor__isnull=False
    )
    return records.filter(actor_id=actor_id).exists() if actor_id else records.exists()


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


def workflow_step_forged(*, rollout_id: int | None, message: str) -> NotPermitted:
    """A workflow step or action the database does not back: refused for good, and evidence of tampering."""
    text = f"Refused for rollout {rollout_id}: {message}"
    security_event(
        kind=SecurityEventKind.ACTION_FORGED,
        source="rollouts.workflow_step",
        message=text,
        subject=f"rollout:{rollout_id}",
    )
    return NotPermitted(text, code="forged_action")


@contextmanager
def _refusals_recorded(kind: str, source: str, *, actor: User | None, subject: str) -> Iterator[None]:
    """Every refusal (DomainError) raised inside becomes a security event before it propagates."""
    try:
        yield
    except DomainError as exc:
        security_event(kind=kind, source=source, message=exc.message, actor=actor, subject=subject)
        raise


def _forged(rollout: Rollout, message: str) -> NotPermitted:
    return workflow_step_forged(rollout_id=rollout.pk, message=message)


def _promotable(rollout: Rollout, wave_index: int) -> str:
    """Why a person may not promote this wave now ("" when they may): it must be open, over its soak, not failed."""
    wave = Wave.objects.filter(rollout=rollout, index=wave_index).first()
    if wave is None or wave.started_at is None:
        return f"Wave {wave_index} has not started."
    if wave.status in (WaveStatus.FAILED, WaveStatus.PROMOTED) or wave.breaker_tripped_at is not None:
        return f"Wave {wave.name} is {'failed' if wave.status != WaveStatus.PROMOTED else 'already promoted'}."
    soak = timedelta(seconds=rollout.approved_plan.waves[wave_index].soak_seconds)
    if timezone.now() < wave.started_at + soak:
        return f"Wave {wave.name} is still soaking."
    return ""


def _authorized_before(
    rollout: Rollout, step_key: str, *, action: str, actor_id: int, wave_index: int, token: str, subject: str
) -> bool:
    """True when this very action (same update, person, proof) was authorised and recorded by an earlier attempt.

    An activity retried after its transaction committed (the worker died before reporting) finds its own record
    and its own spent token: it succeeds without recording again. Anything else under the same key is refused.
    """
    record = DecisionRecord.objects.filter(step_key=step_key).only("action", "actor_id").first()
    if record is None:
        return False
    with _refusals_recorded(SecurityEventKind.ACTION_FORGED, "rollouts.human_action", actor=None, subject=subject):
        claim = action_token_check(
            token=token,
            actor_id=actor_id,
            rollout_id=rollout.pk,
            action=action,
            wave_index=wave_index,
            now=timezone.now(),
        )
    if (record.action, record.actor_id) != (f"rollout.{action}", actor_id) or not action_token_spent(claim):
        # _forged reports the security event itself.
        raise _forged(rollout, f"Update {step_key} was already recorded for another action, person or proof.")
    return True


@transaction.atomic
def human_action_authorize(
    *, rollout_id: int, action: str, actor_id: int, reason: str, wave_index: int, token: str, update_id: str = ""
) -> None:
    """Re-check a person's action against the database, verify and spend its proof (the token minted for that
    person after sign-in), and record it; raises NotPermitted when refused. A promotion opens the next wave.

    Exactly once per Temporal Update (`update_id`): a retried attempt of an action already recorded changes and
    records nothing (see rollouts.step_keys and `_authorized_before`)."""
    rollout = Rollout.objects.select_for_update(of=("self",)).select_related("change").get(pk=rollout_id)
    if action not in HUMAN_ACTIONS:
        raise InvalidInput(f"Unknown action {action}.")
    subject = f"rollout:{rollout_id} {action} as user {actor_id}"
    # The rollout row lock serialises every action on this rollout, so the earlier attempt has committed or failed.
    step_key = human_action_step_key(rollout_id, wave_index, action, update_id)
    if step_key is not None and _authorized_before(
        rollout, step_key, action=action, actor_id=actor_id, wave_index=wave_index, token=token, subject=subject
    ):
        return
    with _refusals_recorded(SecurityEventKind.ACTION_FORGED, "rollouts.human_action", actor=None, subject=subject):
        action_token_spend(
            token=token,
            actor_id=actor_id,
            rollout_id=rollout_id,
            action=action,
            wave_index=wave_index,
            now=timezone.now(),
        )
    actor = get_user_model().objects.filter(pk=actor_id, is_active=True).first()
    with _refusals_recorded(
        SecurityEventKind.ACTION_UNAUTHORISED, "rollouts.human_action", actor=actor, subject=subject
    ):
        refusal = rollout_actor_refusal(actor, rollout)
        if refusal is not None:
            raise refusal
    if action == Update.PROMOTE:
        promote_refusal = _promotable(rollout, wave_index)
        if promote_refusal:
            raise Conflict(promote_refusal, code="not_promotable")
        wave_transition(
            waves=Wave.objects.filter(rollout=rollout, index=wave_index),
            to=WaveStatus.PROMOTED,
            verdict_at=timezone.now(),
        )
    after = {"wave": wave_index} if wave_index >= 0 else None
    _record(actor, rollout, f"rollout.{action}", after=after, reason=reason, step_key=step_key)


def rollout_actor_refusal(actor: User | None, rollout: Rollout) -> NotPermitted | None:
    """Who may act on a rollout at all: an operator who did not author its change (separation of duties)."""
    return operator_not_author_refusal(
        actor, author_id=rollout.change.author_id, act="act on a rollout", act_as_other="decide on its rollout"
    )


def rollout_act_refusal(actor: User, rollout: Rollout, action: str) -> DomainError | None:
    """The part of `rollout_action_refusal` the database decides for good: a known action, by an operator who did
    not author the change, on a rollout that has not finished. The phase part is the workflow's to apply."""
    if action not in HUMAN_ACTIONS:
        return InvalidInput(f"Unknown action {action}.", fields={"action": [f"One of: {', '.join(HUMAN_ACTIONS)}."]})
    refusal = rollout_actor_refusal(actor, rollout)
    if refusal is not None:
        return refusal
    if rollout.status not in ROLLOUT_ACTIVE:
        return Conflict(
            f"The rollout is already {rollout.get_status_display().lower()}; nothing more can be done.", code="finished"
        )
    return None


def rollout_action_refusal(
    actor: User, rollout: Rollout, action: str, *, wave_index: int | None = None
) -> DomainError | None:
    """Why `actor` may not take `action` (promote, pause, resume, abort, rollback) on the rollout now (None when
    they may): an operator who did not author the change, on an unfinished rollout, in a phase that allows it
    (`workflows.policy.human_action_refusal` over the database projection, the rule the workflow's update
    validator applies to its own state). The dashboard offers exactly the actions for which it returns None.
    `action_token_issue` raises its person part (`rollout_act_refusal`); the phase part is raised by the workflow's
    update validator from the same function over the workflow's live state, because the projection read here can
    trail the workflow by one activity (refusing on it would turn away a pause the workflow accepts). `wave_index`
    is the wave a promotion names (default: the current wave)."""
    refusal = rollout_act_refusal(actor, rollout, action)
    if refusal is not None:
        return refusal
    phase_refusal = policy.human_action_refusal(
        action,
        actor_id=actor.pk,
        actor_roles=roles_of(actor),
        author_id=rollout.change.author_id,
        phase=rollout.status,
        gate=rollout.gate,
        gated_wave=rollout.current_wave,
        requested_wave=rollout.current_wave if wave_index is None or wave_index < 0 else wave_index,
    )
    if phase_refusal:
        return Conflict(phase_refusal, code="not_allowed_now")
    return None


def rollout_act(
    *, actor: User, rollout: Rollout, action: str, reason: str = "", wave_index: int = -1
) -> WorkflowStatus:
    """A person's promote / abort / rollback / pause / resume, sent to the workflow as a Temporal Update.

    Checked here first so the caller gets a clear refusal without a round trip; the update carries a token minted
    for this authenticated person, which the workflow's authorize activity verifies and spends before it records
    the decision (the `temporal` CLI reaches the workflow without passing through here, see action_token_issue).
    """
    from workflows.client import execute_rollout_update
    from workflows.types import HumanAction

    token = action_token_issue(actor=actor, rollout=rollout, action=action, reason=reason, wave_index=wave_index)
    return execute_rollout_update(
        rollout.pk,
        action,
        HumanAction(
            actor_id=actor.pk, actor_roles=sorted(roles_of(actor)), reason=reason, wave_index=wave_index, token=token
        ),
    )


def action_token_issue(*, actor: User, rollout: Rollout, action: str, reason: str, wave_index: int) -> str:
    """Mint the proof for one action by this signed-in person, after the checks the workflow would make."""
    refusal = rollout_act_refusal(actor, rollout, action)
    if refusal is not None:
        raise refusal
    if action in (Update.ABORT, Update.ROLLBACK) and not reason.strip():
        raise InvalidInput(f"A reason is required to {action}.", fields={"reason": ["Required."]})
    return action_token_mint(
        actor_id=actor.pk, rollout_id=rollout.pk, action=action, wave_index=wave_index, now=timezone.now()
    )
