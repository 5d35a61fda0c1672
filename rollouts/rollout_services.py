"""Rollout life cycle: start (people), the steps the workflow's activities take, and human actions.

Each function is one atomic action that names its actor (a person, or the workflow as `system:temporal`)
and writes the decision record in the same transaction. Workflow-facing steps are idempotent: Temporal
retries activities, so repeating a step must change nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from approvals import services as change_services
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.plans import plan_hash, wave_sizes
from approvals.records import record_decision
from devices.models import Device, Region
from devices.scope import scope_devices
from ota_project.errors import Conflict, InvalidInput, NotPermitted
from ota_project.roles import Role, has_role, roles_of
from rollouts.choices import (
    DEADLINE_PHASE,
    DEPLOYMENT_FAILURES,
    DEPLOYMENT_IN_PROGRESS,
    ROLLOUT_ACTIVE,
    ROLLOUT_TRANSITIONS,
    DeploymentKind,
    DeploymentStatus,
    RolloutStatus,
    WaveStatus,
)
from rollouts.cohorts import Target, next_cohort, order_targets
from rollouts.models import Deployment, HealthSample, Rollout, Wave
from rollouts.windows import blackout_until, region_next_opening
from workflows.types import PhaseChange, WaveHealth

SYSTEM = "temporal"
BULK_BATCH = 5000


def _record(actor: AbstractBaseUser | None, rollout: Rollout, action: str, **kwargs: Any) -> None:
    record_decision(
        actor=actor, action=action, object_type="rollout", object_id=rollout.pk, system_actor=SYSTEM, **kwargs
    )


def _transition(
    rollout: Rollout, to: str, *, actor: AbstractBaseUser | None, action: str, reason: str = "", **updates: Any
) -> bool:
    """The one guarded status change; False (and nothing written) when already in `to`."""
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
    _record(actor, rollout, action, before={"status": rollout.status}, after={"status": to}, reason=reason)
    rollout.status = to
    return True


def _targets(change: ChangeRequest) -> list[Target]:
    devices = scope_devices(change.target_scope).values_list("pk", "serial", "hardware_model_id", "region_id")
    pilots = set(scope_devices(change.target_scope).filter(tags__name="pilot").values_list("pk", flat=True))
    return [Target(pk, serial, (model, region), pk in pilots) for pk, serial, model, region in devices]


def _conflicting_rollouts(change: ChangeRequest) -> list[str]:
    mine = scope_devices(change.target_scope).values("pk")
    clashes = []
    for other in Rollout.objects.filter(status__in=ROLLOUT_ACTIVE).select_related("change"):
        overlap = scope_devices(other.change.target_scope).filter(pk__in=mine).count()
        if overlap:
            clashes.append(f"rollout-{other.pk} (change {other.change_id}) shares {overlap} devices")
    return clashes


@transaction.atomic
def rollout_start(*, actor: AbstractBaseUser, change: ChangeRequest, start_workflow: bool = True) -> Rollout:
    """Start the rollout of an approved change: an operator who is not its author, inside its window, no overlap.

    `start_workflow=False` only records the start (the demo history plays its steps through the services)."""
    change = ChangeRequest.objects.select_for_update().get(pk=change.pk)
    if not has_role(actor, Role.OPERATOR):
        raise NotPermitted("Only operators start rollouts.")
    if change.author_id == actor.pk:
        raise NotPermitted("You are the author of this change; someone else must start its rollout.")
    if change.status not in (ChangeStatus.APPROVED, ChangeStatus.SCHEDULED):
        raise Conflict(f"The change is {change.status}; only approved changes are rolled out.", code="not_approved")
    change_services.change_assert_approved(change)
    now = timezone.now()
    if not change.requested_window_start <= now < change.requested_window_end:
        raise Conflict(
            f"Outside the change's requested window ({change.requested_window_start:%Y-%m-%d %H:%M} to "
            f"{change.requested_window_end:%Y-%m-%d %H:%M} UTC).",
            code="outside_window",
        )
    if change.scheduled_start and now < change.scheduled_start:
        raise Conflict(f"The change is scheduled to start at {change.scheduled_start:%Y-%m-%d %H:%M} UTC.")
    if Rollout.objects.filter(change=change).exists():
        raise Conflict("This change already has a rollout.", code="already_started")
    clashes = _conflicting_rollouts(change)
    if clashes:
        raise Conflict(
            "Another active rollout targets some of the same devices: " + "; ".join(clashes) + ".", code="conflict"
        )
    targets = _targets(change)
    plan = change.rollout_plan
    rollout = Rollout.objects.create(
        change=change,
        release=change.release,
        rollback_release=change.rollback_release,
        plan=plan,
        plan_hash=plan_hash(plan),
        started_by=actor,
    )
    sizes = wave_sizes(plan["waves"], total=len(targets), pilots=sum(t.pilot for t in targets))
    Wave.objects.bulk_create(
        Wave(rollout=rollout, index=i, name=w["name"], planned_devices=sizes[i]) for i, w in enumerate(plan["waves"])
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


def workflow_input(rollout: Rollout) -> Any:
    """The RolloutWorkflow input for a rollout, from its approved plan."""
    from workflows.types import RolloutInput, WavePlan

    plan = rollout.plan
    return RolloutInput(
        rollout_id=rollout.pk,
        change_id=rollout.change_id,
        author_id=rollout.change.author_id,
        waves=[
            WavePlan(
                w["name"],
                w["soak_seconds"],
                w["min_sample"],
                float(w["success_threshold"]),
                float(w["failure_threshold"]),
                w["promotion"],
            )
            for w in plan["waves"]
        ],
        abort_policy=plan["abort_policy"],
        monitor_interval_seconds=plan.get("monitor_interval_seconds", 30),
    )


def search_attributes_for(rollout: Rollout) -> Any:
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
    blackout = blackout_until(rollout.plan, now)
    if blackout:
        end, reason = blackout
        return max(1, int((end - now).total_seconds()) + 1), f"blackout until {end.isoformat()}: {reason}"
    if not rollout.plan.get("maintenance_windows"):
        return 0, ""
    region_ids = scope_devices(rollout.change.target_scope).values("region_id")
    openings = [
        region_next_opening(rollout.plan, code, zone, now)
        for code, zone in Region.objects.filter(pk__in=region_ids).values_list("code", "time_zone")
    ]
    openings = [o for o in openings if o is not None]
    if not openings:
        return 3600, "no maintenance window opens for the targeted regions within a week"
    first = min(openings)
    if first <= now:
        return 0, ""
    return max(1, int((first - now).total_seconds()) + 1), f"next maintenance window opens {first.isoformat()}"


def _pacing_times(
    plan: dict[str, Any], cohort: list[Target], region_codes: dict[int, str], start: datetime
) -> list[datetime]:
    pacing = plan.get("pacing", {})
    rate = pacing.get("devices_per_minute", 0)
    per_region = pacing.get("per_region", {})
    counters: dict[int, int] = {}
    times = []
    for position, target in enumerate(cohort):
        region_id = target.stratum[1]
        region_rate = per_region.get(region_codes.get(region_id, ""), {}).get("devices_per_minute", 0)
        offsets = [0.0]
        if rate:
            offsets.append(position / rate)
        if region_rate:
            offsets.append(counters.get(region_id, 0) / region_rate)
        counters[region_id] = counters.get(region_id, 0) + 1
        times.append(start + timedelta(minutes=max(offsets)))
    return times


@transaction.atomic
def wave_assign(*, rollout_id: int, wave_index: int) -> int:
    """Create the wave's deployments in bulk; idempotent (a wave is assigned in one transaction or not at all)."""
    wave = (
        Wave.objects.select_for_update().select_related("rollout__change").get(rollout_id=rollout_id, index=wave_index)
    )
    rollout = wave.rollout
    existing = wave.deployments.filter(kind=DeploymentKind.UPDATE).count()
    if existing:
        return existing
    plan = rollout.plan
    wave_plan = plan["waves"][wave_index]
    last = wave_index == len(plan["waves"]) - 1
    assigned = set(rollout.deployments.values_list("device_id", flat=True))
    ordered = order_targets(rollout.pk, _targets(rollout.change), stratify=bool(wave_plan.get("stratify")))
    size = len(ordered) if last else wave.planned_devices
    cohort = next_cohort(
        ordered, already_assigned=assigned, size=size, pilot_only=wave_plan["cohort"]["kind"] == "pilot"
    )
    now = timezone.now()
    region_codes = dict(Region.objects.values_list("pk", "code"))
    not_before = _pacing_times(plan, cohort, region_codes, now)
    download = timedelta(seconds=plan["deadlines"]["download_seconds"])
    insert_deployments(
        [
            (rollout.pk, wave.pk, target.device_id, rollout.release_id, DeploymentKind.UPDATE, start, start + download)
            for target, start in zip(cohort, not_before, strict=True)
        ]
    )
    Wave.objects.filter(pk=wave.pk).update(assigned_devices=len(cohort), status=WaveStatus.RUNNING, started_at=now)
    _record(None, rollout, "rollout.wave_assign", after={"wave": wave_index, "devices": len(cohort)})
    return len(cohort)


# (rollout_id, wave_id, device_id, release_id, kind, not_before, deadline_at) of one new deployment.
DeploymentRow = tuple[int, int, int, int, str, datetime, datetime]
COPY_COLUMNS = (
    "rollout_id",
    "wave_id",
    "device_id",
    "release_id",
    "kind",
    "not_before",
    "deadline_at",
    "status",
    "attempts",
    "last_seq",
    "failure_class",
    "detail",
    "created_at",
    "updated_at",
    "from_version",
    "from_release_counter",
)
# Devices per lookup query where the database caps bound parameters (SQLite: 999 in older builds).
LOOKUP_BATCH = 900
UNKNOWN_SOFTWARE: tuple[str, int | None] = ("", None)


def _installed_software(device_ids: list[int]) -> dict[int, tuple[str, int | None]]:
    """What each device runs now per the inventory: device id -> (installed version, release counter).

    One query on PostgreSQL (an array parameter, however large the wave), batches elsewhere; never one per device.
    """
    if not device_ids:
        return {}
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(
                f"SELECT id, installed_version, installed_release_counter FROM {Device._meta.db_table} "
                "WHERE id = ANY(%s)",
                [device_ids],
            )
            return {pk: (version, counter) for pk, version, counter in cursor.fetchall()}
    installed: dict[int, tuple[str, int | None]] = {}
    for offset in range(0, len(device_ids), LOOKUP_BATCH):
        batch = device_ids[offset : offset + LOOKUP_BATCH]
        for pk, version, counter in Device.objects.filter(pk__in=batch).values_list(
            "pk", "installed_version", "installed_release_counter"
        ):
            installed[pk] = (version, counter)
    return installed


def insert_deployments(rows: list[DeploymentRow]) -> None:
    """Insert new deployments in bulk: COPY on PostgreSQL (100,000 rows in seconds), bulk_create elsewhere.

    Each row also stores what its device runs at this moment (`from_version`, `from_release_counter`), read from
    the inventory in the same transaction, so the software register shows the exact version the deployment
    replaced. Callers hold the wave or rollout row lock and insert only rows that do not exist yet (no conflicts).
    """
    now = timezone.now()
    installed = _installed_software([row[2] for row in rows])
    if connection.vendor == "postgresql":
        table = Deployment._meta.db_table
        with connection.cursor() as cursor:
            with cursor.cursor.copy(f"COPY {table} ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy:
                for row in rows:
                    # A device missing here does not exist: the deferred foreign key refuses the row at commit.
                    version, counter = installed.get(row[2], UNKNOWN_SOFTWARE)
                    copy.write_row((*row, DeploymentStatus.PENDING, 0, -1, "", "", now, now, version, counter))
        return
    deployments = []
    for rollout_id, wave_id, device_id, release_id, kind, not_before, deadline_at in rows:
        version, counter = installed.get(device_id, UNKNOWN_SOFTWARE)
        deployments.append(
            Deployment(
                rollout_id=rollout_id,
                wave_id=wave_id,
                device_id=device_id,
                release_id=release_id,
                kind=kind,
                not_before=not_before,
                deadline_at=deadline_at,
                from_version=version,
                from_release_counter=counter,
            )
        )
    Deployment.objects.bulk_create(deployments, batch_size=BULK_BATCH)


def _expire_deadlines(deployments: Any, now: datetime) -> int:
    expired = 0
    for status, phase in DEADLINE_PHASE.items():
        expired += deployments.filter(status=status, deadline_at__lt=now).update(
            status=DeploymentStatus.TIMED_OUT, failure_class=phase, finished_at=now, updated_at=now
        )
    return expired


def finished_rollouts_expire_deadlines(*, now: datetime | None = None) -> int:
    """Time out in-flight deployments of finished rollouts whose deadline passed (no workflow watches them any more);
    idempotent, run periodically by celery beat."""
    finished = (RolloutStatus.COMPLETED, RolloutStatus.ABORTED, RolloutStatus.ROLLED_BACK)
    return _expire_deadlines(Deployment.objects.filter(rollout__status__in=finished), now or timezone.now())


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


def _health_json(health: WaveHealth) -> dict[str, int]:
    return {
        k: getattr(health, k)
        for k in ("total", "pending", "in_progress", "succeeded", "failed", "timed_out", "rolled_back", "cancelled")
    }


def _health_sample(rollout_id: int, wave_index: int, kind: str, health: WaveHealth) -> None:
    """Keep the health history for charts: a new row only when the counts changed since the last evaluation.

    Retried activities and quiet soaks only move the last row's `taken_at`, so rows grow with changes, not ticks.
    """
    now = timezone.now()
    counts = _health_json(health)
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
    """Expire missed deadlines (timed_out counts as a failure), then count the wave's update deployments."""
    wave = _wave(rollout_id, wave_index)
    deployments = wave.deployments.filter(kind=DeploymentKind.UPDATE)
    _expire_deadlines(deployments, timezone.now())
    health = deployment_health(deployments)
    Wave.objects.filter(pk=wave.pk).update(health=_health_json(health))
    Rollout.objects.filter(pk=rollout_id).update(last_health=_health_json(health))
    _health_sample(rollout_id, wave_index, HealthSample.Kind.WAVE, health)
    return health


WAVE_STATUS_FOR_GATE = {
    "promotion": WaveStatus.PASSED,
    "inconclusive": WaveStatus.INCONCLUSIVE,
    "halted": WaveStatus.FAILED,
}


@transaction.atomic
def rollout_phase(change: PhaseChange) -> None:
    """Project the workflow's phase, wave and gate into the database (records only real status changes)."""
    rollout = Rollout.objects.select_for_update().get(pk=change.rollout_id)
    updates: dict[str, Any] = {"current_wave": change.wave_index, "gate": change.gate, "status_reason": change.reason}
    if change.health is not None:
        updates["last_health"] = _health_json(change.health)
    _transition(rollout, change.phase, actor=None, action=f"rollout.{change.phase}", reason=change.reason, **updates)
    wave_status = WAVE_STATUS_FOR_GATE.get(change.gate)
    if wave_status:
        Wave.objects.filter(rollout=rollout, index=change.wave_index).update(
            status=wave_status, verdict_at=timezone.now()
        )
    elif change.phase == RolloutStatus.RUNNING:
        Wave.objects.filter(rollout=rollout, index__lt=change.wave_index).exclude(
            status__in=[WaveStatus.FAILED]
        ).update(status=WaveStatus.PROMOTED)


# Deployments whose device has not started installing: a halt, abort or completion cancels them (the agent asks the
# server before it installs, so a device holding a downloaded image drops it).
STOP_OFFERING = (
    DeploymentStatus.PENDING,
    DeploymentStatus.OFFERED,
    DeploymentStatus.DOWNLOADING,
    DeploymentStatus.DOWNLOADED,
)


@transaction.atomic
def rollout_halt(*, rollout_id: int, wave_index: int, reason: str) -> int:
    """Halt at once: the release is offered nowhere any more (undelivered deployments are cancelled)."""
    rollout = Rollout.objects.select_for_update().get(pk=rollout_id)
    now = timezone.now()
    cancelled = rollout.deployments.filter(kind=DeploymentKind.UPDATE, status__in=STOP_OFFERING).update(
        status=DeploymentStatus.CANCELLED, finished_at=now, updated_at=now, detail="rollout halted"
    )
    Wave.objects.filter(rollout=rollout, index=wave_index).update(status=WaveStatus.FAILED, verdict_at=now)
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
        halted_at=now,
        current_wave=wave_index,
        status_reason=reason,
    )
    _record(None, rollout, "rollout.stop_offering", after={"cancelled_deployments": cancelled})
    return cancelled


TOOK_NEW_IMAGE = (
    DeploymentStatus.INSTALLING,
    DeploymentStatus.REBOOTING,
    DeploymentStatus.CONFIRMING,
    DeploymentStatus.SUCCEEDED,
)


@transaction.atomic
def rollback_assign(*, rollout_id: int) -> int:
    """Offer the rollback release to every device that took the new image; idempotent."""
    rollout = Rollout.objects.select_for_update().get(pk=rollout_id)
    now = timezone.now()
    rollout.deployments.filter(kind=DeploymentKind.UPDATE, status__in=STOP_OFFERING).update(
        status=DeploymentStatus.CANCELLED, finished_at=now, updated_at=now, detail="rollout rolling back"
    )
    took = rollout.deployments.filter(kind=DeploymentKind.UPDATE).filter(
        status__in=TOOK_NEW_IMAGE
    ) | rollout.deployments.filter(
        kind=DeploymentKind.UPDATE,
        status__in=DEPLOYMENT_FAILURES - {DeploymentStatus.ROLLED_BACK},
        failure_class__in=["install", "confirm"],
    )
    download = timedelta(seconds=rollout.plan["deadlines"]["download_seconds"])
    rows = list(took.values_list("device_id", "wave_id"))
    already = set(rollout.deployments.filter(kind=DeploymentKind.ROLLBACK).values_list("device_id", flat=True))
    insert_deployments(
        [
            (rollout.pk, wave_id, device_id, rollout.rollback_release_id, DeploymentKind.ROLLBACK, now, now + download)
            for device_id, wave_id in rows
            if device_id not in already
        ]
    )
    _transition(
        rollout,
        RolloutStatus.ROLLING_BACK,
        actor=None,
        action="rollout.rolling_back",
        reason="rollback offered to every device that took the new image",
    )
    _record(None, rollout, "rollout.rollback_assign", after={"devices": len(rows)})
    return rollout.deployments.filter(kind=DeploymentKind.ROLLBACK).count()


@transaction.atomic
def rollback_health(*, rollout_id: int) -> WaveHealth:
    """Expire missed rollback deadlines, then count the rollback deployments."""
    deployments = Deployment.objects.filter(rollout_id=rollout_id, kind=DeploymentKind.ROLLBACK)
    _expire_deadlines(deployments, timezone.now())
    health = deployment_health(deployments)
    wave_index = Rollout.objects.filter(pk=rollout_id).values_list("current_wave", flat=True).first() or 0
    _health_sample(rollout_id, wave_index, HealthSample.Kind.ROLLBACK, health)
    return health


@transaction.atomic
def rollout_finish(*, rollout_id: int, outcome: str, reason: str = "", actor_id: int | None = None) -> None:
    """End the rollout (completed, aborted or rolled back) and close its change accordingly; idempotent."""
    rollout = Rollout.objects.select_for_update().select_related("change").get(pk=rollout_id)
    actor = get_user_model().objects.filter(pk=actor_id).first() if actor_id else None
    if rollout.status == outcome:
        return
    now = timezone.now()
    if outcome in (RolloutStatus.ABORTED, RolloutStatus.COMPLETED):
        # Nothing is offered after the end: undelivered work is cancelled, never left pending for ever. Devices
        # already installing finish and report; their deadlines still apply (finished_rollouts_expire_deadlines).
        rollout.deployments.filter(status__in=STOP_OFFERING).update(
            status=DeploymentStatus.CANCELLED, finished_at=now, updated_at=now, detail=f"rollout {outcome}"
        )
    if outcome == RolloutStatus.COMPLETED:
        Wave.objects.filter(rollout=rollout).exclude(status=WaveStatus.FAILED).update(status=WaveStatus.PROMOTED)
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


HUMAN_ACTIONS = ("promote", "abort", "rollback", "pause", "resume")


@transaction.atomic
def human_action_authorize(*, rollout_id: int, action: str, actor_id: int, reason: str, wave_index: int) -> None:
    """Re-check a person's action against the database and record it; raises NotPermitted when refused."""
    rollout = Rollout.objects.select_related("change").get(pk=rollout_id)
    actor = get_user_model().objects.filter(pk=actor_id, is_active=True).first()
    if actor is None or not has_role(actor, Role.OPERATOR):
        raise NotPermitted("Only operators act on rollouts.")
    if rollout.change.author_id == actor.pk:
        raise NotPermitted("You are the author of this change; someone else must decide on its rollout.")
    if action not in HUMAN_ACTIONS:
        raise InvalidInput(f"Unknown action {action}.")
    after = {"wave": wave_index} if wave_index >= 0 else None
    _record(actor, rollout, f"rollout.{action}", after=after, reason=reason)


def rollout_act(
    *, actor: AbstractBaseUser, rollout: Rollout, action: str, reason: str = "", wave_index: int = -1
) -> Any:
    """A person's promote / abort / rollback / pause / resume, sent to the workflow as a Temporal Update.

    Checked here first so the caller gets a clear refusal without a round trip; the workflow's validator and
    its authorize activity check again (the `temporal` CLI reaches the workflow without passing through here)
    and the activity writes the decision record.
    """
    from workflows.client import execute_rollout_update
    from workflows.types import HumanAction

    if action not in HUMAN_ACTIONS:
        raise InvalidInput(f"Unknown action {action}.", fields={"action": [f"One of: {', '.join(HUMAN_ACTIONS)}."]})
    if not has_role(actor, Role.OPERATOR):
        raise NotPermitted("Only operators act on rollouts.")
    if rollout.change.author_id == actor.pk:
        raise NotPermitted("You are the author of this change; someone else must decide on its rollout.")
    if action in ("abort", "rollback") and not reason.strip():
        raise InvalidInput(f"A reason is required to {action}.", fields={"reason": ["Required."]})
    if rollout.status not in ROLLOUT_ACTIVE:
        raise Conflict(f"The rollout is {rollout.status}.", code="finished")
    return execute_rollout_update(
        rollout.pk,
        action,
        HumanAction(actor_id=actor.pk, actor_roles=sorted(roles_of(actor)), reason=reason, wave_index=wave_index),
    )
