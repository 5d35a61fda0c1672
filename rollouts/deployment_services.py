"""What devices do to their deployments: receive an offer, report progress, confirm a healthy boot.

Reports carry a device-side sequence number: a replay or an older report changes nothing, and no report moves
a deployment backwards. A deployment succeeds only when the device confirms it booted the image it was
offered and passed its health window.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypedDict

from django.contrib.postgres.expressions import ArraySubquery
from django.db.models import Exists, F, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from approvals.audit.records import record_decision
from approvals.choices import ChangeStatus
from devices.choices import DeviceStatus
from devices.firmware.models import FirmwareRelease
from devices.models import Device
from ota_project.compiled_queries import CompiledQuery
from ota_project.db import atomic_with_retry
from ota_project.errors import Conflict, InvalidInput
from rollouts.choices import (
    DEPLOYMENT_PROGRESS,
    DEPLOYMENT_REPORTABLE,
    DEPLOYMENT_TERMINAL,
    DEPLOYMENT_UNSTARTED,
    DeploymentKind,
    DeploymentStatus,
    RolloutStatus,
)
from rollouts.eligibility import release_refusal
from rollouts.fleet_safety import fleet_safety_check_soon
from rollouts.health import deployment_health, health_counts, wave_plan_of
from rollouts.models import Deployment, Wave
from rollouts.quarantine import device_failure_record
from rollouts.step_keys import verdict_step_key
from rollouts.transitions import deployment_transition
from rollouts.windows import region_next_opening, region_open
from workflows import policy
from workflows.types import Verdict

if TYPE_CHECKING:
    from django_stubs_ext import WithAnnotations

RETRY_BACKOFF_SECONDS = 60
OFFERABLE_ROLLOUTS = (RolloutStatus.RUNNING, RolloutStatus.AWAITING_PROMOTION, RolloutStatus.ROLLING_BACK)
# Rollouts that offer, retry or continue no update any more.
UPDATES_STOPPED = (
    RolloutStatus.HALTED,
    RolloutStatus.ROLLING_BACK,
    RolloutStatus.ABORTED,
    RolloutStatus.COMPLETED,
    RolloutStatus.ROLLED_BACK,
)
PHASE_OF_STATUS: dict[str, str] = {
    DeploymentStatus.DOWNLOADING: "download",
    DeploymentStatus.DOWNLOADED: "install",
    DeploymentStatus.INSTALLING: "install",
    DeploymentStatus.REBOOTING: "confirm",
    DeploymentStatus.CONFIRMING: "confirm",
}


@dataclass(frozen=True)
class Report:
    """One status report from a device about one deployment."""

    seq: int
    status: str
    detail: str = ""
    booted_version: str = ""  # required with `succeeded`: the image the device is running now
    health_passed: bool = False  # required with `succeeded`: the post-update checks passed
    failure_class: str = ""  # with failed / rolled_back: download, install, boot, health, ...


def _deadline(deployment: Deployment, status: str, now: datetime) -> datetime | None:
    phase = PHASE_OF_STATUS.get(status)
    return now + timedelta(seconds=deployment.rollout.approved_plan.deadlines.for_phase(phase)) if phase else None


@dataclass(frozen=True)
class Refusal:
    """Why a deployment may not go on: skipped (the device does not qualify) or withdrawn (the rollout stopped)."""

    status: str
    reason: str


def _withdrawal(deployment: Deployment, device_status: str, *, tripped: bool) -> Refusal | None:
    """Why the rollout no longer wants this deployment to go on: device not active, change closed, breaker
    (`tripped`: whether the rollout's breaker has tripped, read by the caller with `tripped_waves`)."""
    rollout = deployment.rollout
    if device_status != DeviceStatus.ACTIVE:
        return Refusal(DeploymentStatus.CANCELLED, f"withdrawn: the device is {device_status}")
    if rollout.change.status != ChangeStatus.IMPLEMENTING:
        return Refusal(DeploymentStatus.CANCELLED, f"withdrawn: the change is {rollout.change.status}")
    if deployment.kind == DeploymentKind.UPDATE and rollout.status in UPDATES_STOPPED:
        return Refusal(DeploymentStatus.CANCELLED, f"withdrawn: the rollout is {rollout.status}")
    if deployment.kind == DeploymentKind.UPDATE and tripped:
        return Refusal(DeploymentStatus.CANCELLED, "withdrawn: the rollout's failure threshold was crossed")
    return None


def _refusal_to_offer(deployment: Deployment, *, supported_model_ids: list[int], tripped: bool) -> Refusal | None:
    """Why this deployment may not be offered (or stay offered) to the device now; None when it may.

    Checked at offer time, not only at submission: the device's inventory, its status, the change and the
    rollout's breaker may all have moved since the deployment was created. Everything is read by the locking
    candidate statement itself (`_offer_candidates`), as of that statement.
    """
    facts = DeviceFacts.of(deployment.device)
    withdrawal = _withdrawal(deployment, facts.status, tripped=tripped)
    if withdrawal is not None:
        return withdrawal
    ineligible = release_refusal(
        deployment.release,
        supported_model_ids=supported_model_ids,
        hardware_model_id=facts.hardware_model_id,
        committed_counter=facts.committed_counter,
    )
    return Refusal(DeploymentStatus.SKIPPED, f"skipped: {ineligible}") if ineligible else None


@dataclass(frozen=True)
class DeviceFacts:
    """What the offer rules read about a device, fresh from its row (not from the request's cached copy)."""

    status: str
    hardware_model_id: int
    committed_counter: int

    @classmethod
    def of(cls, device: Device) -> DeviceFacts:
        """The device's status, hardware model and committed counter (the higher of inventory and its report)."""
        committed = max(device.installed_release_counter or 0, device.reported_release_counter or 0)
        return cls(device.status, device.hardware_model_id, committed)


def tripped_waves(rollout: int | OuterRef) -> QuerySet[Wave]:
    """The waves of a rollout that crossed their failure threshold: any one trips the rollout's breaker."""
    return Wave.objects.filter(Q(rollout=rollout), breaker_tripped_at__isnull=False)  # Q: the stubs refuse OuterRef


def breaker_tripped(rollout_id: int) -> bool:
    """True once any wave of the rollout crossed its failure threshold (the release is offered nowhere)."""
    return tripped_waves(rollout_id).exists()


def _end_unstarted(deployment: Deployment, refusal: Refusal, now: datetime) -> None:
    """End a deployment the device has not started installing (pending .. downloaded), with the reason."""
    deployment_transition(
        deployments=[deployment.pk],  # the table withdraws (cancelled, skipped) only before installing
        to=refusal.status,
        now=now,
        reason=refusal.reason,
        deadline_at=None,
    )


# The deployments deployment_offer looks at: a device with none of them is offered nothing and nothing changes
# (the device API's one-statement check-in relies on it to answer idle devices without the locking path).
OFFER_CANDIDATES = (DeploymentStatus.PENDING, DeploymentStatus.OFFERED)


class _OfferRules(TypedDict):
    supported_model_ids: list[int]
    breaker_tripped: bool


if TYPE_CHECKING:  # WithAnnotations takes its second argument only for the type checker
    OfferCandidate = WithAnnotations[Deployment, _OfferRules]


# What the offer rules and the offer's answer read of the joined rows (every deployment column is kept). A rule
# that reads another column would cost a query per candidate: tests/device_api/test_quick_checkin.py counts them.
_OFFER_COLUMNS = (
    *(field.name for field in Deployment._meta.concrete_fields),
    "rollout__status",
    "rollout__plan",
    "rollout__change__status",
    "release__version",
    "release__release_counter",
    "release__artifact__sha256",
    "release__artifact__size_bytes",
    "device__status",
    "device__hardware_model_id",
    "device__installed_release_counter",
    "device__reported_release_counter",
    "device__region__code",
    "device__region__time_zone",
)


def _offer_candidates(device_id: int) -> QuerySet[OfferCandidate]:
    """The device's pending and offered deployments, rollbacks first, locked, each with what the offer rules read:
    its device (and region), rollout, change, release and artifact rows, the release's supported hardware models
    (`supported_model_ids`) and whether the rollout's breaker has tripped (`breaker_tripped`)."""
    supported = FirmwareRelease.hardware_models.through.objects.filter(firmwarerelease_id=OuterRef("release_id"))
    return (
        # of=("self",): lock only the deployment rows. Without it PostgreSQL also locks the joined rollout, release,
        # artifact and device rows, so concurrent check-ins of one rollout skip each other's deployments
        # (skip_locked) and every report of the device would queue behind the offer.
        Deployment.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("rollout__change", "release__artifact", "device__region")
        .only(*_OFFER_COLUMNS)
        .annotate(
            supported_model_ids=ArraySubquery(supported.values("hardwaremodel_id")),
            breaker_tripped=Exists(tripped_waves(OuterRef("rollout_id"))),
        )
        .filter(device_id=device_id, status__in=OFFER_CANDIDATES)
        .order_by("-kind", "created_at")  # "update" > "rollback": rollbacks come first
    )


# Compiled once per connection: building this wide statement costs Django more than PostgreSQL needs to run it.
_offer_candidates_of: CompiledQuery[OfferCandidate] = CompiledQuery(_offer_candidates, stand_in=1_975_318_642)


@atomic_with_retry()
def deployment_offer(*, device_id: int, now: datetime | None = None) -> Deployment | None:
    """The deployment to offer a checking-in device now, if any: rollbacks first, respecting pause, halt, the
    breaker, pacing, the region's maintenance window and the plan's concurrent-download limit.

    Every candidate is re-checked against the device as it is now (status, hardware model, anti-rollback) and the
    change (still implementing): a deployment that no longer qualifies is skipped (or cancelled) with the reason.
    An update offered earlier is re-sent only while its region's window is open: the agent acts on an offer at once,
    so after the window closed an offer whose download has not started goes back to pending for the next window.
    One statement locks the candidates and reads all of that, so re-sending a live offer costs that statement.
    """
    now = now or timezone.now()
    for deployment in _offer_candidates_of(device_id):
        rollout = deployment.rollout
        allowed = OFFERABLE_ROLLOUTS if deployment.kind == DeploymentKind.UPDATE else (RolloutStatus.ROLLING_BACK,)
        if rollout.status not in allowed:
            continue
        refusal = _refusal_to_offer(
            deployment, supported_model_ids=deployment.supported_model_ids, tripped=deployment.breaker_tripped
        )
        if refusal:
            _end_unstarted(deployment, refusal, now)
            continue
        region = deployment.device.region
        window_closed = deployment.kind == DeploymentKind.UPDATE and not region_open(
            rollout.approved_plan, region.code, region.time_zone, now
        )
        if deployment.status == DeploymentStatus.OFFERED:
            if not window_closed:
                return deployment
            # An update must not start outside its region's window: an offer the device has not acted on is not
            # re-sent (the agent acts at once on an offer) but goes back to pending for the next window.
            _offer_withdraw_to_pending(deployment, region.code, region.time_zone, now)
            continue
        if deployment.not_before and deployment.not_before > now:
            continue
        if window_closed:
            continue
        if not _download_slot_free(deployment, region.code):
            continue
        deployment_transition(
            deployments=[deployment.pk],
            to=DeploymentStatus.OFFERED,
            now=now,
            attempts=deployment.attempts + 1,
            deadline_at=max(
                deployment.deadline_at or now, now + timedelta(seconds=rollout.approved_plan.deadlines.download_seconds)
            ),
        )
        deployment.refresh_from_db()
        return deployment
    return None


def _offer_withdraw_to_pending(deployment: Deployment, region_code: str, time_zone: str, now: datetime) -> None:
    """Return an offer whose download has not started to pending because its region's maintenance window closed:
    no failure and no attempt counted (the next offer is the same attempt), the reason kept in its detail, and its
    download deadline counted from the region's next opening, so waiting for the window never times it out."""
    plan = deployment.rollout.approved_plan
    opening = region_next_opening(plan, region_code, time_zone, now)
    download = timedelta(seconds=plan.deadlines.download_seconds)
    deadline = (opening or now) + download
    if deployment.deadline_at is not None:
        deadline = max(deadline, deployment.deadline_at)
    deployment_transition(
        deployments=[deployment.pk],  # under the candidate statement's row lock: still offered
        to=DeploymentStatus.PENDING,
        now=now,
        reason=(
            f"back to pending: region {region_code}'s maintenance window closed before the download started; "
            + (f"offered again from {opening.isoformat()}" if opening else "no window opens within a week")
        ),
        attempts=max(0, deployment.attempts - 1),
        deadline_at=deadline,
    )


def _download_slot_free(deployment: Deployment, region_code: str) -> bool:
    pacing = deployment.rollout.approved_plan.pacing
    limits: list[tuple[int, dict[str, str]]] = [
        (pacing.limits.concurrent, {}),
        (pacing.region(region_code).concurrent, {"device__region__code": region_code}),
    ]
    for limit, scope in limits:
        if (
            limit
            and Deployment.objects.filter(
                rollout=deployment.rollout, status__in=(DeploymentStatus.OFFERED, DeploymentStatus.DOWNLOADING), **scope
            ).count()
            >= limit
        ):
            return False
    return True


def _progress_index(status: str) -> int:
    return DEPLOYMENT_PROGRESS.index(status) if status in DEPLOYMENT_PROGRESS else len(DEPLOYMENT_PROGRESS)


@dataclass(frozen=True)
class ReportOutcome:
    """The deployment after a report, and whether this report changed it (True exactly once per seq)."""

    deployment: Deployment
    applied: bool


# Failure reports that can take a wave across its failure threshold (a retried failure goes back to pending).
_WAVE_FAILURES = (DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK)
# A deployment the server ended before the device confirmed; a later confirmed success is still the device's truth.
_LATE_SUCCESS_FROM = (DeploymentStatus.TIMED_OUT, DeploymentStatus.CANCELLED)


@atomic_with_retry()
def deployment_report(
    *, device: Device, deployment_id: int, report: Report, now: datetime | None = None
) -> ReportOutcome:
    """Apply a device's report to its own deployment: idempotent, out-of-order safe, never backwards.

    Decided under the deployment's row lock, so of many concurrent copies of one report exactly one is applied.
    A report that crosses the wave's failure threshold trips the breaker in the same transaction; a device still
    short of installing whose rollout tripped (or that was quarantined) is told the deployment was withdrawn.
    """
    now = now or timezone.now()
    if report.status not in DEPLOYMENT_REPORTABLE:
        raise InvalidInput(f"A device cannot report {report.status!r}.", fields={"status": ["Not reportable."]})
    deployment = (
        Deployment.objects.select_for_update(of=("self",))  # never the rollout row: reports would queue on it
        .select_related("rollout__change", "release", "wave")
        .filter(pk=deployment_id, device=device)
        .first()
    )
    if deployment is None:
        # Another device's deployment looks exactly like a missing one: no information leaks.
        raise InvalidInput("No such deployment for this device.", fields={"deployment": ["Unknown."]}, code="not_found")
    if report.seq < deployment.last_seq:
        raise Conflict(
            f"Sequence number {report.seq} is older than the last applied report ({deployment.last_seq}).",
            code="stale_seq",
            fields={"seq": [f"Must be at least {deployment.last_seq}."]},
        )
    if report.seq == deployment.last_seq:
        return ReportOutcome(deployment, applied=False)  # a replay: nothing changes
    if deployment.status in DEPLOYMENT_TERMINAL:
        if report.status == DeploymentStatus.SUCCEEDED and deployment.status in _LATE_SUCCESS_FROM:
            _check_success(deployment, report)
            _apply_late_success(device, deployment, report, now)
        else:
            Deployment.objects.filter(pk=deployment.pk).update(last_seq=report.seq, updated_at=now)
        deployment.refresh_from_db()
        return ReportOutcome(deployment, applied=True)
    updates = _report_updates(device, deployment, report, now)
    status = updates.pop("status", deployment.status)
    if status == deployment.status:
        Deployment.objects.filter(pk=deployment.pk).update(**updates)
    elif deployment_transition(deployments=[deployment.pk], to=status, now=now, **updates) != 1:
        # Decided under the row lock from the deployment's status: a refusal here is a rule this file and the
        # transition table disagree on, never a race.
        raise Conflict(f"A deployment that is {deployment.status} cannot become {status}.", code="invalid_transition")
    if status == DeploymentStatus.SUCCEEDED:
        _commit_inventory(device, deployment, now)
    elif status in _WAVE_FAILURES and deployment.kind == DeploymentKind.UPDATE:
        wave_breaker_check(wave_id=deployment.wave_id, now=now, system_actor="device_api")
    if report.status in _WAVE_FAILURES and deployment.kind == DeploymentKind.UPDATE:
        # Counted per failure report, also when the plan retries it (the deployment went back to pending).
        device_failure_record(device=device, deployment=deployment, failure_class=report.failure_class, now=now)
    if status == DeploymentStatus.ROLLED_BACK and deployment.kind == DeploymentKind.UPDATE:
        fleet_safety_check_soon(deployment.release_id)
    deployment.refresh_from_db()
    return ReportOutcome(deployment, applied=True)


def _check_success(deployment: Deployment, report: Report) -> None:
    if report.booted_version != deployment.release.version or not report.health_passed:
        raise InvalidInput(
            "Success needs the booted version of the offered release and a passed health window.",
            fields={
                "booted_version": [f"Expected {deployment.release.version}."],
                "health_passed": ["Must be true."],
            },
        )


def _report_updates(device: Device, deployment: Deployment, report: Report, now: datetime) -> dict[str, Any]:
    """The columns a (fresh, in-order) report changes on an unfinished deployment."""
    updates: dict[str, Any] = {"last_seq": report.seq, "updated_at": now, "detail": report.detail[:500]}
    status = report.status
    if status in (DeploymentStatus.DOWNLOADING, DeploymentStatus.DOWNLOADED, DeploymentStatus.INSTALLING):
        refusal = deployment_withdrawal(deployment, device)
        if refusal is not None and deployment.status in DEPLOYMENT_UNSTARTED:
            # Nothing new starts on a withdrawn deployment: the answer tells the device to drop it.
            return {
                **updates,
                "status": refusal.status,
                "finished_at": now,
                "deadline_at": None,
                "detail": refusal.reason[:500],
            }
    if status == DeploymentStatus.SUCCEEDED:
        if deployment.status != DeploymentStatus.CONFIRMING:
            raise Conflict(
                "Success is accepted only from a deployment that is confirming its boot.", code="not_confirming"
            )
        _check_success(deployment, report)
    retries = deployment.rollout.approved_plan.retries.for_failure(report.failure_class)
    if (
        status == DeploymentStatus.FAILED
        and deployment.attempts <= retries
        and deployment_withdrawal(deployment, device) is None
    ):
        # A failure class the plan retries (download, install): offer the same deployment again after a backoff.
        backoff = timedelta(seconds=RETRY_BACKOFF_SECONDS * deployment.attempts)
        download = timedelta(seconds=deployment.rollout.approved_plan.deadlines.download_seconds)
        updates.update(
            status=DeploymentStatus.PENDING,
            not_before=now + backoff,
            deadline_at=now + backoff + download,
            failure_class=report.failure_class[:32],
        )
    elif status in (DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK, DeploymentStatus.SUCCEEDED):
        updates.update(
            status=status,
            finished_at=now,
            deadline_at=None,
            failure_class="" if status == DeploymentStatus.SUCCEEDED else report.failure_class[:32],
        )
    elif _progress_index(status) > _progress_index(deployment.status):
        updates.update(status=status, deadline_at=_deadline(deployment, status, now))
        if deployment.status == DeploymentStatus.PENDING:
            # A start reported on a pending deployment (an offer given back at its window's close whose download had
            # begun, the report late) is an attempt, as its offer was: the plan's retries count it.
            updates["attempts"] = deployment.attempts + 1
    return updates


def deployment_withdrawal(deployment: Deployment, device: Device) -> Refusal | None:
    """Why a deployment must not go on now (device not active, change closed, breaker tripped); None if it may.

    `device` is the one this request authenticated (its status read at the start of the request)."""
    tripped = deployment.kind == DeploymentKind.UPDATE and breaker_tripped(deployment.rollout_id)
    return _withdrawal(deployment, device.status, tripped=tripped)


def _commit_inventory(device: Device, deployment: Deployment, now: datetime) -> None:
    """The device runs the release now; its committed counter never goes down (anti-rollback)."""
    counter = deployment.release.release_counter
    Device.objects.filter(pk=device.pk).update(
        installed_version=deployment.release.version,
        installed_release_counter=Greatest(F("installed_release_counter"), Value(counter)),
        install_failures=0,  # a confirmed healthy install: the quarantine count starts again
        updated_at=now,
    )


def _apply_late_success(device: Device, deployment: Deployment, report: Report, now: datetime) -> None:
    """A confirmed, healthy boot reported after the server gave up on the deployment: the device's truth wins."""
    was = deployment.status
    deployment_transition(
        deployments=[deployment.pk],
        to=DeploymentStatus.SUCCEEDED,
        now=now,
        reason=f"succeeded late: confirmed after the deployment was {was}",
        last_seq=report.seq,
        failure_class="",
    )
    _commit_inventory(device, deployment, now)
    record_decision(
        actor=None,
        action="deployment.late_success",
        object_type="deployment",
        object_id=deployment.pk,
        before={"status": was},
        after={"status": DeploymentStatus.SUCCEEDED, "device": device.serial, "version": deployment.release.version},
        reason="The device confirmed a healthy boot of the release after its deadline; the inventory follows it.",
        system_actor="device_api",
    )


def wave_breaker_check(*, wave_id: int, now: datetime, system_actor: str) -> bool:
    """Trip the wave's breaker if its failures crossed the failure threshold; True when tripped (now or before).

    Takes the wave row lock so concurrent failure reports are counted one after another (none can miss the
    others); lock order: deployment row, then wave row, never the rollout row.
    """
    wave = Wave.objects.select_for_update(of=("self",)).select_related("rollout").get(pk=wave_id)
    if wave.breaker_tripped_at is not None:
        return True
    plan = wave.rollout.approved_plan.waves[wave.index]
    health = deployment_health(wave.deployments.filter(kind=DeploymentKind.UPDATE))
    if policy.wave_verdict(health, wave_plan_of(plan), soak_done=False) != Verdict.FAIL:
        return False
    reason = (
        f"Wave {wave.name} crossed its failure threshold: {health.failures} of {health.finished} finished devices "
        f"failed (threshold {plan.failure_threshold:.0%}). The release is offered nowhere any more."
    )
    Wave.objects.filter(pk=wave.pk).update(breaker_tripped_at=now, breaker_reason=reason[:300])
    record_decision(
        actor=None,
        action="rollout.breaker_tripped",
        object_type="rollout",
        object_id=wave.rollout_id,
        after={"wave": wave.index, "counts": health_counts(health)},
        reason=reason,
        system_actor=system_actor,
        step_key=verdict_step_key(wave.rollout_id, wave.index, "breaker"),
    )
    return True
