"""Starting a rollout: serialised, re-checked against the change, its premise and every other rollout; the
workflow starts after commit with a deterministic id, and a sweep re-starts any whose start was lost."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone

from approvals import services as change_services
from approvals.audit.security import SecurityEventKind
from approvals.models import ChangeRequest
from approvals.plan_warnings import change_plan_warnings
from approvals.plans import plan_hash, wave_sizes
from approvals.selectors import change_start_refusal
from devices.firmware.repository.selectors import image_repository_initialised
from devices.firmware.signing import release_sign
from devices.scope import scope_devices
from ota_project.db import atomic_with_retry
from ota_project.errors import Conflict, DomainError
from rollouts.choices import (
    ROLLOUT_ACTIVE,
    RolloutStatus,
)
from rollouts.cohorts import Target
from rollouts.health import wave_plan_of
from rollouts.models import Rollout, Wave
from workflows.types import RolloutInput

if TYPE_CHECKING:
    from temporalio.common import TypedSearchAttributes

from rollouts.rollout_services.shared import _record, _refusals_recorded


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
    """One rollout start at a time (an advisory lock held until commit)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_START_LOCK_KEY])


def rollout_start_blockers(change: ChangeRequest) -> list[Conflict]:
    """What stops this change's rollout from starting besides who and when (`change_start_refusal`): a rollback
    release that can no longer roll back, another active rollout on some of the same devices. The start raises the
    first; the start page lists them all before anyone presses Start."""
    blockers = []
    cannot_roll_back = change_services.rollback_plan_errors(change)
    if cannot_roll_back:
        blockers.append(
            Conflict(
                "The change cannot roll back: " + " ".join(cannot_roll_back),
                code="cannot_roll_back",
                fields={"rollback_release": cannot_roll_back},
            )
        )
    clashes = _conflicting_rollouts(change)
    if clashes:
        blockers.append(
            Conflict(
                "Another active rollout targets some of the same devices: " + "; ".join(clashes) + ".",
                code="conflict",
            )
        )
    return blockers


def _warnings_record(change: ChangeRequest, acknowledged: Collection[str] | None) -> list[dict[str, object]]:
    """The plan's warnings as the start finds them; with `acknowledged` (the start page), each must be among them."""
    warnings = change_plan_warnings(change)
    if acknowledged is not None:
        missing = [warning.message for warning in warnings if warning.code not in acknowledged]
        if missing:
            raise Conflict(
                "Acknowledge each warning before starting: " + " ".join(missing),
                code="warnings_not_acknowledged",
                fields={"acknowledge": missing},
            )
    return [
        {"code": w.code, "message": w.message, "acknowledged": acknowledged is not None and w.code in acknowledged}
        for w in warnings
    ]


@atomic_with_retry()
def rollout_start(
    *,
    actor: User,
    change: ChangeRequest,
    start_workflow: bool = True,
    acknowledged_warnings: Collection[str] | None = None,
) -> Rollout:
    """Start the rollout of an approved change: an operator who is not its author, inside its window, no overlap.

    Starts are serialised (one advisory lock, taken first), so two operators starting overlapping changes at the
    same instant cannot both pass the overlap check; the partial unique index on active deployments backs it up.
    `start_workflow=False` only records the start (the demo history plays its steps through the services).
    `acknowledged_warnings` (the start page): the codes of the plan warnings the operator acknowledged; every
    current warning must be among them. The decision record keeps the warnings and whether each was acknowledged."""
    with _refusals_recorded(
        SecurityEventKind.START_REFUSED, "rollouts.rollout_start", actor=actor, subject=f"change:{change.pk}"
    ):
        return _rollout_start(
            actor=actor, change=change, start_workflow=start_workflow, acknowledged=acknowledged_warnings
        )


def rollout_start_refusal(actor: User, change: ChangeRequest, *, now: datetime | None = None) -> DomainError | None:
    """Everything a person would check at Start, as the start itself checks it (None when the start may go ahead):
    who may start and when (`change_start_refusal`: approval still valid and not lapsed, inside the window, at or
    after the scheduled start), the premise (the rollback release fits every target) and no overlapping rollout
    (`rollout_start_blockers`). The one pre-flight: `rollout_start` raises what this returns under its lock, and the
    scheduled start holds the change with it."""
    refusal = change_start_refusal(actor, change, now=now)
    if refusal is not None:
        return refusal
    blockers = rollout_start_blockers(change)
    if blockers:
        return blockers[0]
    if change.plan is None:
        return Conflict("The change has no rollout plan.", code="no_plan")
    return None


def _rollout_start(
    *,
    actor: User,
    change: ChangeRequest,
    start_workflow: bool,
    acknowledged: Collection[str] | None = None,
    now: datetime | None = None,
) -> Rollout:
    _serialise_starts()
    change = ChangeRequest.objects.select_for_update(of=("self",)).get(pk=change.pk)
    # Who may start, and when, the premise and the overlap: one rule shared with the pages and the scheduled start.
    refusal = rollout_start_refusal(actor, change, now=now)
    if refusal is not None:
        raise refusal
    warnings = _warnings_record(change, acknowledged)
    targets = _targets(change)
    plan = change.plan
    if plan is None:
        raise Conflict("The change has no rollout plan.", code="no_plan")
    if image_repository_initialised():
        # The release enters the signed image targets before any device can be offered it, and only through the
        # signing step's own check of the approvals and the stored bytes. Before any record is written: the step
        # takes the image repository's lock, which must come before the decision record's chain lock.
        release_sign(actor=actor, change=change)
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
            "warnings": warnings,
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
