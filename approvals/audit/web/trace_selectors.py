"""Page-level reads for the trace of one change and the software register of one vehicle.

Both pages are read-only views over rows the services wrote: the change, its approvals, its rollout, waves and
deployments, and the decision records about each of them. Nothing here decides anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from django.db.models import Count, QuerySet

from approvals.audit.models import DecisionRecord
from approvals.models import Approval, ChangeRequest, RiskQuestion
from approvals.plans import PlanWave
from approvals.selectors import change_plan_hash, change_records, change_release_sha256, valid_approvals
from devices.models import Device
from rollouts.choices import DEPLOYMENT_FAILURES, DeploymentKind, DeploymentStatus
from rollouts.models import Deployment, Rollout, Wave
from workflows.types import WaveHealth

STAGE_OF_OBJECT = {"change": "Request", "approval": "Approval", "rollout": "Rollout"}
WAVE_HEALTH_FIELDS = tuple(spec.name for spec in fields(WaveHealth))
# Deployments a register lists at most (a vehicle gets a handful of updates a year; this is a safety bound).
REGISTER_MAX_DEPLOYMENTS = 500
# Where a deployment's "before" version in the register comes from.
BEFORE_STORED, BEFORE_FROM_HISTORY, BEFORE_ASSUMED = "stored", "history", "assumed"


# --- Trace of one change -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RiskAnswer:
    """One answer of the risk questionnaire with the question's text."""

    key: str
    question: str
    answer: Any


@dataclass(frozen=True)
class ApprovalStep:
    """One approval decision, its binding, whether it still counts, and the record that holds it."""

    approval: Approval
    record: DecisionRecord | None
    counts: bool
    binding_current: bool


@dataclass(frozen=True)
class WaveStep:
    """One wave with its verdict, health against the plan's thresholds, and the records about it."""

    wave: Wave
    plan: PlanWave
    health: dict[str, int]
    failures: int
    finished: int
    success_share: float | None
    failure_share: float | None
    records: list[DecisionRecord]


@dataclass(frozen=True)
class TimelineEntry:
    """One decision on the change's timeline, labelled with the stage it belongs to."""

    stage: str
    record: DecisionRecord


@dataclass
class ChangeTrace:
    """Everything the trace page shows, request to per-device outcome."""

    change: ChangeRequest
    request_records: list[DecisionRecord]
    risk_answers: list[RiskAnswer]
    risk_record: DecisionRecord | None
    approvals: list[ApprovalStep]
    approve_record: DecisionRecord | None
    rollout: Rollout | None
    rollout_start_record: DecisionRecord | None
    waves: list[WaveStep]
    rollout_events: list[DecisionRecord]
    outcome_counts: list[dict[str, Any]]
    timeline: list[TimelineEntry] = field(default_factory=list)


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _wave_step(wave: Wave, plan_waves: Sequence[PlanWave], records: list[DecisionRecord]) -> WaveStep:
    health = dict(wave.health or {})
    # The counts the workflow last judged the wave on, read the way its gate reads them.
    judged = WaveHealth(**{key: health[key] for key in WAVE_HEALTH_FIELDS if isinstance(health.get(key), int)})
    return WaveStep(
        wave=wave,
        plan=plan_waves[wave.index],  # one wave row per planned wave
        health=health,
        failures=judged.failures,
        finished=judged.finished,
        success_share=_share(judged.succeeded, judged.total),
        failure_share=_share(judged.failures, judged.finished),
        records=[r for r in records if isinstance(r.after, dict) and r.after.get("wave") == wave.index],
    )


def _risk_record(records: list[DecisionRecord]) -> DecisionRecord | None:
    """The latest record that set the change's risk level (its creation or the edit that changed it)."""
    setting = [
        r for r in records if r.object_type == "change" and isinstance(r.after, dict) and "risk_level" in r.after
    ]
    return setting[-1] if setting else None


def change_rollout(change: ChangeRequest) -> Rollout | None:
    """The rollout of a change, if it was started."""
    return Rollout.objects.select_related("release", "rollback_release", "started_by").filter(change=change).first()


def change_trace(change: ChangeRequest) -> ChangeTrace:
    """Assemble the trace of one change from its rows and its decision records."""
    rollout = change_rollout(change)
    records = list(
        change_records(change, rollout_id=rollout.pk if rollout else None).order_by("seq")
    )  # chain (= time) order
    by_approval = {r.object_id: r for r in records if r.object_type == "approval"}
    counting = set(valid_approvals(change).values_list("pk", flat=True))
    release_sha256, plan_hash = change_release_sha256(change), change_plan_hash(change)
    approvals = [
        ApprovalStep(
            approval=approval,
            record=by_approval.get(str(approval.pk)),
            counts=approval.pk in counting,
            binding_current=(approval.revision, approval.release_sha256, approval.plan_hash)
            == (change.revision, release_sha256, plan_hash),
        )
        for approval in change.approvals.select_related("approver").order_by("created_at", "id")
    ]
    questions = dict(RiskQuestion.objects.values_list("key", "text"))
    answers = [RiskAnswer(key, questions.get(key, key), value) for key, value in sorted(change.risk_answers.items())]
    rollout_records = [r for r in records if r.object_type == "rollout"]
    waves: list[WaveStep] = []
    outcome_counts: list[dict[str, Any]] = []
    if rollout is not None:
        plan_waves = rollout.approved_plan.waves
        waves = [_wave_step(wave, plan_waves, rollout_records) for wave in rollout.waves.order_by("index")]
        outcome_counts = deployment_outcome_counts(rollout)
    change_side = [r for r in records if r.object_type == "change"]
    return ChangeTrace(
        change=change,
        request_records=[r for r in change_side if r.action != "change.approve"],
        risk_answers=answers,
        risk_record=_risk_record(records),
        approvals=approvals,
        approve_record=next((r for r in reversed(change_side) if r.action == "change.approve"), None),
        rollout=rollout,
        rollout_start_record=next((r for r in rollout_records if r.action == "rollout.start"), None),
        waves=waves,
        rollout_events=[r for r in rollout_records if r.action != "rollout.start"],
        outcome_counts=outcome_counts,
        timeline=[TimelineEntry(STAGE_OF_OBJECT.get(r.object_type, r.object_type), r) for r in records],
    )


def deployment_outcome_counts(rollout: Rollout) -> list[dict[str, Any]]:
    """Per deployment kind (update, rollback), how many devices are in each status; statuses in life-cycle order."""
    rows = rollout.deployments.order_by().values_list("kind", "status").annotate(n=Count("id"))
    counts: dict[str, dict[str, int]] = {}
    for kind, status, n in rows:
        counts.setdefault(kind, {})[status] = n
    order = list(DeploymentStatus.values)
    labels = dict(DeploymentKind.choices)
    return [
        {
            "kind": kind,
            "label": labels.get(kind, kind),
            "total": sum(counts[kind].values()),
            "statuses": [(status, counts[kind][status]) for status in order if status in counts[kind]],
        }
        for kind in DeploymentKind.values
        if kind in counts
    ]


def rollout_deployment_list(
    rollout: Rollout,
    *,
    status: str = "",
    kind: str = "",
    wave: int | None = None,
    serial: str = "",
    failure_class: str = "",
) -> QuerySet[Deployment]:
    """The rollout's per-device deployments matching every given filter, by wave then serial."""
    deployments = rollout.deployments.select_related("device__hardware_model", "device__region", "release", "wave")
    if status:
        deployments = deployments.filter(status=status)
    if kind:
        deployments = deployments.filter(kind=kind)
    if wave is not None:
        deployments = deployments.filter(wave__index=wave)
    if serial:
        deployments = deployments.filter(device__serial__icontains=serial)
    if failure_class:
        deployments = deployments.filter(failure_class=failure_class)
    return deployments.order_by("wave__index", "device__serial", "kind")


# --- Software register of one vehicle ------------------------------------------------------------------------------


@dataclass
class RegisterEntry:
    """One line of a vehicle's software register: an inventory event or a deployment, with versions around it."""

    at: datetime
    kind: str  # "inventory" | "update" | "rollback" | "status"
    title: str
    version_before: str = ""
    version_after: str = ""
    # Release counters, where known exactly (the deployment stored what it replaced, or the release it installed).
    counter_before: int | None = None
    counter_after: int | None = None
    before_source: str = ""  # deployments: "stored" | "history" (derived) | "assumed" (the rollback release)
    deployment: Deployment | None = None
    record: DecisionRecord | None = None
    outcome: str = ""
    detail: str = ""

    @property
    def before_assumed(self) -> bool:
        """The "before" version is the change's rollback release, not something the device was known to run."""
        return self.before_source == BEFORE_ASSUMED

    @property
    def before_derived(self) -> bool:
        """The "before" version is derived from the device's history, not stored with the deployment."""
        return self.before_source == BEFORE_FROM_HISTORY


@dataclass
class VehicleRegister:
    """The software history of one device, oldest first, and what it reported last."""

    device: Device
    entries: list[RegisterEntry]
    deployments_total: int
    truncated: bool
    rollbacks: int
    device_fallbacks: int
    derived: int = 0  # deployments whose "before" is derived from history (created before it was stored)
    assumed: int = 0  # deployments whose "before" is assumed to be the change's rollback release


def _device_records(device: Device) -> list[DecisionRecord]:
    return list(DecisionRecord.objects.filter(object_type="device", object_id=device.serial).order_by("seq"))


def _record_entry(record: DecisionRecord, known: str | None) -> tuple[RegisterEntry | None, str | None]:
    """The register line for an inventory record and the version known after it (None: unchanged/unknown)."""
    after = record.after if isinstance(record.after, dict) else {}
    before = record.before if isinstance(record.before, dict) else {}
    verb = record.action.rsplit(".", 1)[-1]
    if record.action == "devices.device.create":
        version = after.get("installed_version")
        return (
            RegisterEntry(
                at=record.created_at,
                kind="inventory",
                title="Added to the inventory",
                version_after=str(version or ""),
                record=record,
            ),
            str(version) if version else known,
        )
    if record.action == "devices.device.update" and "installed_version" in after:
        version = str(after["installed_version"])
        return (
            RegisterEntry(
                at=record.created_at,
                kind="inventory",
                title="Inventory corrected",
                version_before=str(before.get("installed_version") or known or ""),
                version_after=version,
                record=record,
                detail=record.reason,
            ),
            version,
        )
    if record.action.startswith("devices.device.") and "status" in after:
        return (
            RegisterEntry(
                at=record.created_at,
                kind="status",
                title=f"Status: {before.get('status', '?')} → {after['status']} ({verb})",
                record=record,
                detail=record.reason,
            ),
            known,
        )
    return None, known


def vehicle_register(device: Device) -> VehicleRegister:
    """Every software change of a device, oldest first: inventory events and each deployment with the version
    before and after it.

    A deployment stores what the device ran (inventory version and release counter) when it was created; that
    exact value is shown. Deployments created before it was stored have none, so for them it is derived by walking
    the device's history in time order: the version the inventory set (creation, corrections) or the last
    deployment that succeeded. When nothing earlier is known (e.g. the device came in by bulk import), the change's
    rollback release is shown and marked as assumed: a change may only name a rollback release that every target
    runs when it is filed.
    """
    all_deployments = device.deployments.select_related(
        "release", "rollout__rollback_release", "rollout__release", "wave"
    )
    total = all_deployments.count()
    deployments = list(all_deployments.order_by("-created_at", "-id")[:REGISTER_MAX_DEPLOYMENTS])
    deployments.reverse()
    # (time, order, payload): starts before records at the same instant, finishes after.
    events: list[tuple[datetime, int, str, Any]] = [(r.created_at, 1, "record", r) for r in _device_records(device)]
    for deployment in deployments:
        events.append((deployment.created_at, 0, "start", deployment))
        if deployment.status == DeploymentStatus.SUCCEEDED and deployment.finished_at:
            events.append((deployment.finished_at, 2, "success", deployment))
    events.sort(key=lambda event: (event[0], event[1]))
    known: str | None = None
    entries: list[RegisterEntry] = []
    for at, _order, what, payload in events:
        if what == "record":
            entry, known = _record_entry(payload, known)
            if entry is not None:
                entries.append(entry)
            continue
        deployment = payload
        if what == "success":
            known = deployment.release.version
            continue
        entry = _deployment_entry(deployment, at, known)
        entries.append(entry)
        known = entry.version_before
    return VehicleRegister(
        device=device,
        entries=entries,
        deployments_total=total,
        truncated=total > len(deployments),
        rollbacks=sum(1 for d in deployments if d.kind == DeploymentKind.ROLLBACK),
        device_fallbacks=sum(1 for d in deployments if d.status == DeploymentStatus.ROLLED_BACK),
        derived=sum(1 for e in entries if e.before_derived),
        assumed=sum(1 for e in entries if e.before_assumed),
    )


def _deployment_entry(deployment: Deployment, at: datetime, known: str | None) -> RegisterEntry:
    """The register line of one deployment: the stored "before" when the row has it, else the reconstruction."""
    if deployment.from_release_counter is not None:  # stored at creation (always with its counter)
        before, source = deployment.from_version, BEFORE_STORED
    elif known is not None:
        before, source = known, BEFORE_FROM_HISTORY
    else:
        before, source = _assumed_before(deployment), BEFORE_ASSUMED
    entry = RegisterEntry(
        at=at,
        kind=deployment.kind,
        title=("Rollback" if deployment.kind == DeploymentKind.ROLLBACK else "Update")
        + f" to {deployment.release.version}",
        version_before=before,
        counter_before=deployment.from_release_counter,
        before_source=source,
        deployment=deployment,
        outcome=deployment.status,
        detail=deployment.detail,
    )
    entry.version_after = _version_after(deployment, before)
    if deployment.status == DeploymentStatus.SUCCEEDED:
        entry.counter_after = deployment.release.release_counter
    elif entry.version_after:
        entry.counter_after = entry.counter_before
    return entry


def _assumed_before(deployment: Deployment) -> str:
    rollout = deployment.rollout
    if deployment.kind == DeploymentKind.ROLLBACK:
        return rollout.release.version
    return rollout.rollback_release.version


def _version_after(deployment: Deployment, before: str) -> str:
    """What the device runs after the deployment: the release once succeeded, unchanged after a failure."""
    if deployment.status == DeploymentStatus.SUCCEEDED:
        return deployment.release.version
    if deployment.status in (*DEPLOYMENT_FAILURES, DeploymentStatus.CANCELLED, DeploymentStatus.SKIPPED):
        return before
    return ""
