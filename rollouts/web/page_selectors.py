"""Page-level reads for the rollout pages: the list, the start preview, and everything the live dashboard shows.

Figures come from the deployments themselves (one aggregate query per table), so the dashboard is current
between two health checks of the workflow; the workflow's own answer (status query) is shown next to them.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import Case, Count, IntegerField, OuterRef, QuerySet, Subquery, Sum, Value, When
from django.db.models.functions import Coalesce
from django.shortcuts import get_object_or_404
from django.urls import reverse
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from approvals.plan_warnings import PlanWarning, change_plan_warnings
from approvals.plans import PlanWave, wave_sizes
from approvals.selectors import change_records, change_start_refusal
from devices.scope import scope_devices
from devices.telemetry_aggregates import INDICATORS, MEAN, Indicator
from rollouts.choices import (
    DEPLOYMENT_FAILURES,
    ROLLOUT_ACTIVE,
    ROLLOUT_TERMINAL,
    DeploymentKind,
    DeploymentStatus,
    RolloutStatus,
)
from rollouts.health import deployment_health, wave_plan_of
from rollouts.kpis import percent
from rollouts.models import Deployment, HealthSample, Rollout, Wave
from rollouts.rollout_services import rollout_action_refusal, rollout_start_blockers
from workflows import policy
from workflows.types import Gate, Update, Verdict, WaveHealth

logger = logging.getLogger(__name__)

TIMELINE_ROWS = 40
FAILURE_ROWS = 20


# --- list -----------------------------------------------------------------------------------------------------


def rollout_page_list() -> QuerySet[Rollout]:
    """Every rollout, active ones first (then the most recently changed), with wave count and progress figures."""
    succeeded = (
        Deployment.objects.filter(rollout=OuterRef("pk"), kind=DeploymentKind.UPDATE, status=DeploymentStatus.SUCCEEDED)
        .order_by()
        .values("rollout")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return (
        Rollout.objects.select_related("change", "release", "rollback_release", "started_by")
        .annotate(
            active_rank=Case(
                When(status__in=ROLLOUT_ACTIVE, then=Value(0)), default=Value(1), output_field=IntegerField()
            ),
            waves_total=Count("waves"),
            planned_total=Coalesce(Sum("waves__planned_devices"), 0),
            succeeded_total=Coalesce(Subquery(succeeded, output_field=IntegerField()), 0),
        )
        .order_by("active_rank", "-updated_at", "-pk")
    )


# --- start preview --------------------------------------------------------------------------------------------


@dataclass
class WavePreview:
    """One planned wave as the start page shows it."""

    index: int
    name: str
    devices: int
    plan: PlanWave

    @property
    def success_threshold_pct(self) -> str:
        return percent(self.plan.success_threshold)

    @property
    def failure_threshold_pct(self) -> str:
        return percent(self.plan.failure_threshold)


@dataclass
class StartPreview:
    """What starting this change's rollout would do: scope size, pilots, waves, and what stands in the way."""

    change: ChangeRequest
    scope_size: int
    pilots: int
    by_model: list[tuple[str, int]]
    waves: list[WavePreview]
    existing: Rollout | None
    blockers: list[str]
    warnings: list[PlanWarning]


def rollout_start_preview(change: ChangeRequest, user: User) -> StartPreview:
    """The start page's figures and the reason (if any) this user cannot start this rollout now: the rule
    `approvals.selectors.change_start_refusal` that rollout_start raises when the form is sent."""
    devices = scope_devices(change.scope)
    scope_size = devices.count()
    pilots = devices.filter(tags__name="pilot").count()
    by_model = list(
        devices.order_by()
        .values_list("hardware_model__name")
        .annotate(n=Count("pk"))
        .order_by("-n", "hardware_model__name")
    )
    plan_waves = plan.waves if (plan := change.plan) else ()
    sizes = wave_sizes(plan_waves, total=scope_size, pilots=pilots)
    waves = [WavePreview(i, w.name, sizes[i], w) for i, w in enumerate(plan_waves)]
    existing = Rollout.objects.filter(change=change).first()
    refusal = change_start_refusal(user, change)
    blockers = [refusal.message] if refusal is not None else []
    if existing is None:  # what Start would refuse anyway, said before anyone presses it
        blockers += [blocker.message for blocker in rollout_start_blockers(change)]
    return StartPreview(change, scope_size, pilots, by_model, waves, existing, blockers, change_plan_warnings(change))


def changes_ready_to_start(user: User) -> QuerySet[ChangeRequest]:
    """Approved (or scheduled) changes without a rollout yet, that this user may see; oldest window first."""
    from approvals.selectors import change_list_for_user

    return (
        change_list_for_user(user)
        .filter(status__in=[ChangeStatus.APPROVED, ChangeStatus.SCHEDULED], rollout__isnull=True)
        .order_by("requested_window_start", "pk")
    )


# --- dashboard ------------------------------------------------------------------------------------------------


def rollout_page_get(pk: int) -> Rollout:
    """One rollout with its change and releases; Http404 when there is none."""
    return get_object_or_404(
        Rollout.objects.select_related("change__author", "release", "rollback_release", "started_by"), pk=pk
    )


@dataclass
class WaveView:
    """One wave: plan, live deployment counts (as its gate reads them) and its health next to the thresholds."""

    index: int
    name: str
    status: str
    planned: int
    assigned: int
    started_at: datetime | None
    verdict_at: datetime | None
    plan: PlanWave
    health: WaveHealth
    is_current: bool
    signals: dict[str, Any] | None = None  # the health gates' last reading (Wave.signals); None: no gates

    @property
    def signal_verdict(self) -> str:
        return str(self.signals.get("verdict", "")) if self.signals else ""

    @property
    def signal_reason(self) -> str:
        return str(self.signals.get("reason", "")) if self.signals else ""

    @property
    def signal_rows(self) -> list[SignalRow]:
        """Each comparison of the last reading, formatted for the page."""
        comparisons = self.signals.get("comparisons", []) if self.signals else []
        return [signal_row(comparison) for comparison in comparisons]

    @property
    def soak_ends_at(self) -> datetime | None:
        """When the wave's soak is over (None before it opened): the earliest its gate can pass."""
        return self.started_at + timedelta(seconds=self.plan.soak_seconds) if self.started_at else None

    @property
    def soak_left(self) -> timedelta | None:
        """How much of the soak is still to run (None when it is over or never started)."""
        ends = self.soak_ends_at
        left = ends - timezone.now() if ends is not None else None
        return left if left is not None and left.total_seconds() > 0 else None

    @property
    def failure_rate(self) -> float | None:
        """failures / finished, as the gate computes it (None before any device finished)."""
        return self.health.failures / self.health.finished if self.health.finished else None

    @property
    def success_share(self) -> float | None:
        """succeeded / assigned, as the gate computes it for promotion."""
        return self.health.succeeded / self.health.total if self.health.total else None

    @property
    def failure_threshold(self) -> float:
        return float(self.plan.failure_threshold)

    @property
    def success_threshold(self) -> float:
        return float(self.plan.success_threshold)

    @property
    def min_sample(self) -> int:
        return self.plan.min_sample

    @property
    def failure_rate_pct(self) -> str:
        return percent(self.failure_rate)

    @property
    def success_share_pct(self) -> str:
        return percent(self.success_share)

    @property
    def failure_threshold_pct(self) -> str:
        return percent(self.failure_threshold)

    @property
    def success_threshold_pct(self) -> str:
        return percent(self.success_threshold)

    @property
    def over_failure_threshold(self) -> bool:
        """Whether the gate halts the wave on these counts (the FAIL rule of workflows.policy.wave_verdict)."""
        return policy.wave_verdict(self.health, wave_plan_of(self.plan), soak_done=False) == Verdict.FAIL

    @property
    def sample_reached(self) -> bool:
        return self.health.finished >= self.min_sample

    @property
    def meets_success_threshold(self) -> bool:
        share = self.success_share
        return share is not None and share >= self.success_threshold - 1e-9


@dataclass(frozen=True)
class SignalRow:
    """One health-gate comparison as the dashboard shows it (text already formatted)."""

    indicator: str
    hardware_model: str
    verdict: str
    before: str
    after: str
    change: str
    tolerance: str
    p_value: str
    test: str
    reason: str


def _signal_value(indicator: Indicator | None, value: Any, n: int) -> str:
    if value is None:
        return f"— (n={n})"
    if indicator is not None and indicator.kind == MEAN:
        return f"{float(value):.1f} {indicator.unit} (n={n})".replace("  ", " ")
    return f"{float(value):.1%} (n={n})"


def _signal_change(change: Any, *, judged: bool) -> str:
    if not judged:
        return "—"
    if change is None:
        return "worse than a zero baseline"
    value = float(change)
    if value > 0:
        return f"{value:.1%} worse"
    return f"{-value:.1%} better" if value < 0 else "no change"


def signal_row(comparison: dict[str, Any]) -> SignalRow:
    """A stored comparison (rollouts.signal_policy.Comparison.to_json) as a row of the dashboard."""
    indicator = INDICATORS.get(str(comparison.get("indicator")))
    change = comparison.get("change")
    p_value = comparison.get("p_value")
    return SignalRow(
        indicator=indicator.label if indicator is not None else str(comparison.get("indicator")),
        hardware_model=str(comparison.get("hardware_model", "")),
        verdict=str(comparison.get("verdict", "")),
        before=_signal_value(indicator, comparison.get("baseline"), int(comparison.get("baseline_n") or 0)),
        after=_signal_value(indicator, comparison.get("candidate"), int(comparison.get("candidate_n") or 0)),
        change=_signal_change(change, judged=bool(comparison.get("test"))),
        tolerance=f"{float(comparison.get('tolerance') or 0):.0%}",
        p_value="—"
        if p_value is None
        else f"{float(p_value):.3g} (level {float(comparison.get('significance') or 0):g})",
        test={"welch": "Welch's t-test", "fisher": "Fisher's exact test"}.get(str(comparison.get("test")), "not run"),
        reason=str(comparison.get("reason", "")),
    )


def wave_views(rollout: Rollout) -> list[WaveView]:
    """Every wave of the rollout with live counts of its update deployments, grouped as the gate groups them."""
    plan_waves = rollout.approved_plan.waves
    return [
        WaveView(
            index=wave.index,
            name=wave.name,
            status=wave.status,
            planned=wave.planned_devices,
            assigned=wave.assigned_devices,
            started_at=wave.started_at,
            verdict_at=wave.verdict_at,
            plan=plan_waves[wave.index],  # the waves were created from this plan, one per planned wave
            # Read-only: unlike rollout_services.wave_health this expires no deadline and writes nothing.
            health=deployment_health(wave.deployments.filter(kind=DeploymentKind.UPDATE)),
            is_current=wave.index == rollout.current_wave,
            signals=wave.signals,
        )
        for wave in rollout.waves.order_by("index")
    ]


@dataclass
class StateCount:
    """Devices in one deployment status."""

    status: str
    label: str
    count: int


def state_counts(rollout: Rollout, kind: str = DeploymentKind.UPDATE) -> list[StateCount]:
    """Deployments of one kind per status, in life-cycle order (statuses nobody is in are left out)."""
    counts = dict(
        Deployment.objects.filter(rollout=rollout, kind=kind).order_by().values_list("status").annotate(n=Count("pk"))
    )
    return [
        StateCount(value, str(label), counts[value]) for value, label in DeploymentStatus.choices if counts.get(value)
    ]


@dataclass
class FailureRow:
    """Failed devices of one hardware model and failure class."""

    hardware_model: str
    status: str
    failure_class: str
    count: int


def failure_breakdown(rollout: Rollout) -> list[FailureRow]:
    """Failed, timed-out and fallen-back update deployments by hardware model and failure class, most first."""
    rows = (
        Deployment.objects.filter(rollout=rollout, kind=DeploymentKind.UPDATE, status__in=DEPLOYMENT_FAILURES)
        .order_by()
        .values_list("device__hardware_model__name", "status", "failure_class")
        .annotate(n=Count("pk"))
        .order_by("-n", "device__hardware_model__name", "status", "failure_class")
    )
    return [
        FailureRow(model, status, failure_class or "unspecified", n)
        for model, status, failure_class, n in rows[:FAILURE_ROWS]
    ]


@dataclass
class SetAside:
    """Deployments ended without an attempt, grouped by why: skipped (the device no longer qualified or was busy)
    or withdrawn (the breaker tripped, the device was quarantined, the change closed)."""

    status: str
    reason: str
    count: int


def set_aside_breakdown(rollout: Rollout) -> list[SetAside]:
    """Skipped and withdrawn deployments by reason, most first (the reason is stored on each deployment)."""
    rows = (
        Deployment.objects.filter(rollout=rollout, status__in=(DeploymentStatus.SKIPPED, DeploymentStatus.CANCELLED))
        .order_by()
        .values_list("status", "detail")
        .annotate(n=Count("pk"))
        .order_by("-n", "status", "detail")
    )
    return [SetAside(status, detail or "no reason recorded", n) for status, detail, n in rows[:FAILURE_ROWS]]


def tripped_breakers(rollout: Rollout) -> list[Wave]:
    """Waves whose breaker tripped: from then on the release was offered nowhere, whatever the workflow did."""
    return list(Wave.objects.filter(rollout=rollout, breaker_tripped_at__isnull=False).order_by("index"))


@dataclass
class GateView:
    """Where the rollout stands for a person: a short label, the tone of the alert and a sentence."""

    label: str
    tone: str
    detail: str


GATE_LABELS: dict[str, str] = {
    Gate.PROMOTION: "Awaiting promotion",
    Gate.INCONCLUSIVE: "Held: inconclusive",
    Gate.HALTED: "Halted",
}


def gate_view(rollout: Rollout, waves: list[WaveView]) -> GateView:
    """The current gate ("awaiting promotion", "held: inconclusive", "paused", ...) and what it means."""
    wave = next((w for w in waves if w.is_current), None)
    wave_name = f"wave {rollout.current_wave + 1} ({wave.name})" if wave else f"wave {rollout.current_wave + 1}"
    reason = rollout.status_reason
    status = rollout.status
    if status == RolloutStatus.PAUSED:
        return GateView("Paused", "warning", reason or f"Paused by an operator at {wave_name}; no new wave starts.")
    if status == RolloutStatus.HALTED:
        return GateView(
            "Halted", "error", reason or f"{wave_name.capitalize()} failed; the release is offered nowhere."
        )
    if status == RolloutStatus.AWAITING_PROMOTION:
        label = GATE_LABELS.get(rollout.gate, "Awaiting a decision")
        return GateView(label, "warning", reason or f"{wave_name.capitalize()} waits for an operator.")
    if status == RolloutStatus.ROLLING_BACK:
        return GateView("Rolling back", "error", reason or "The rollback release is offered to affected devices.")
    if status == RolloutStatus.RUNNING:
        return GateView("Running", "info", reason or f"Monitoring {wave_name}.")
    if status == RolloutStatus.SCHEDULED:
        return GateView("Scheduled", "info", reason or "Waiting for the workflow to start the first wave.")
    return GateView(rollout.get_status_display(), "success" if status == RolloutStatus.COMPLETED else "info", reason)


def runbook_steps(rollout: Rollout, waves: list[WaveView], failures: list[FailureRow]) -> list[str]:
    """Concrete next steps for an operator when the rollout needs a person (empty when it does not)."""
    wave = next((w for w in waves if w.is_current), None)
    name = wave.name if wave else str(rollout.current_wave)
    rollback = rollout.rollback_release.version
    worst = failures[0] if failures else None
    where = (
        f"Most failures: {worst.count} × {worst.status.replace('_', ' ')} on {worst.hardware_model} "
        f"(failure class {worst.failure_class})."
        if worst
        else "No failed device is recorded yet; check the status reason above."
    )
    if rollout.status == RolloutStatus.HALTED:
        return [
            f"The release is no longer offered anywhere. Read why wave {name} failed in the gate panel.",
            "Check the failing hardware model and the failure classes in “Failures by hardware model”. " + where,
            f"Roll back if devices that took {rollout.release.version} must return to {rollback} "
            "(the rollout ends rolled back, the change too).",
            "Abort instead if those devices may keep what they installed (the rollout ends aborted, the change "
            "cancelled).",
            "Either way give a reason (it lands in the decision record), then file a new change for the fix.",
        ]
    if rollout.status == RolloutStatus.AWAITING_PROMOTION and rollout.gate == Gate.INCONCLUSIVE:
        sample = wave.min_sample if wave else 0
        finished = wave.health.finished if wave else 0
        timed_out = wave.health.timed_out if wave else 0
        return [
            f"Wave {name} is held: {finished} of the {sample} devices it needs finished, or too few succeeded "
            "while none failed hard. It is never promoted automatically.",
            f"Check the {timed_out} timed-out devices: offline vehicles, a closed maintenance window or a too "
            "tight deadline. " + where,
            f"Promote wave {name} only if you accept the evidence; otherwise roll back (devices return to "
            f"{rollback}) or abort.",
        ]
    if rollout.status == RolloutStatus.AWAITING_PROMOTION:
        return [
            f"Wave {name} passed its gate and is a manual wave: a person promotes it.",
            "Compare the failure rate and success share with their thresholds below, and look at the failure "
            "classes. " + where,
            f"Promote to start the next wave, or pause, roll back (to {rollback}) or abort with a reason.",
        ]
    if rollout.status == RolloutStatus.PAUSED:
        return [
            "No new wave starts and nothing is promoted while paused; devices already offered the release "
            "finish, and monitoring goes on (a failing wave still halts).",
            "A paused wave's soak keeps running, so it may turn inconclusive if its devices cannot finish.",
            "Resume when the reason for the pause is gone, or abort / roll back with a reason.",
        ]
    if rollout.status == RolloutStatus.ROLLING_BACK:
        return [
            f"Devices that took {rollout.release.version} are offered {rollback}; the saga tracks each of them "
            "with the plan's deadlines.",
            "Watch the rollback deployments below; devices that fail or time out need a visit or a manual recovery.",
        ]
    return []


@dataclass
class TimelineEntry:
    """One decision record about this rollout or its change, as the dashboard lists it."""

    record: DecisionRecord
    subject: str

    @property
    def wave_number(self) -> int | None:
        """1-based wave the record names, if any."""
        wave = (self.record.after or {}).get("wave") if isinstance(self.record.after, dict) else None
        return wave + 1 if isinstance(wave, int) else None


def rollout_timeline(rollout: Rollout, limit: int = TIMELINE_ROWS) -> list[TimelineEntry]:
    """Decision records of the rollout and of its change (and the change's approvals), newest first."""
    records = change_records(rollout.change, rollout_id=rollout.pk).order_by("-seq")[:limit]
    return [TimelineEntry(record, record.object_type) for record in records]


# --- health history -------------------------------------------------------------------------------------------


@dataclass
class HealthCharts:
    """Series for the dashboard's charts: failure rate and success share (in %) of one wave, or the rollback."""

    failure_rate: list[dict[str, Any]] = field(default_factory=list)
    success_share: list[dict[str, Any]] = field(default_factory=list)
    failure_threshold: float | None = None
    success_threshold: float | None = None
    subject: str = ""


def _points(samples: list[HealthSample], value: Any) -> list[tuple[datetime, float]]:
    """Each sample holds its counts from first_at to taken_at: both ends become points (a step, not a slope)."""
    points: list[tuple[datetime, float]] = []
    for sample in samples:
        figure = value(sample)
        if figure is None:
            continue
        points.append((sample.first_at, figure))
        if sample.taken_at != sample.first_at:
            points.append((sample.taken_at, figure))
    return points


def health_charts(rollout: Rollout, waves: list[WaveView]) -> HealthCharts:
    """The current wave's failure rate and success share over time, next to its thresholds (or the rollback's)."""
    rolling_back = rollout.status in (RolloutStatus.ROLLING_BACK, RolloutStatus.ROLLED_BACK) or (
        HealthSample.objects.filter(rollout=rollout, kind=HealthSample.Kind.ROLLBACK).exists()
    )
    if rolling_back:
        samples = list(HealthSample.objects.filter(rollout=rollout, kind=HealthSample.Kind.ROLLBACK))
        if samples:
            return HealthCharts(
                failure_rate=[
                    {
                        "label": "Rollback failure rate",
                        "points": _points(samples, lambda s: None if s.failure_rate is None else 100 * s.failure_rate),
                    }
                ],
                success_share=[{"label": "Devices restored", "points": _points(samples, _success_share)}],
                subject="the rollback",
            )
    wave = next((w for w in waves if w.is_current), None)
    if wave is None:
        return HealthCharts()
    samples = list(HealthSample.objects.filter(rollout=rollout, kind=HealthSample.Kind.WAVE, wave_index=wave.index))
    return HealthCharts(
        failure_rate=[
            {
                "label": f"Wave {wave.name} failure rate",
                "points": _points(samples, lambda s: None if s.failure_rate is None else 100 * s.failure_rate),
            }
        ],
        success_share=[{"label": f"Wave {wave.name} succeeded", "points": _points(samples, _success_share)}],
        failure_threshold=100 * wave.failure_threshold,
        success_threshold=100 * wave.success_threshold,
        subject=f"wave {wave.name}",
    )


def _success_share(sample: HealthSample) -> float | None:
    total = sample.counts.get("total", 0)
    return 100 * sample.counts.get("succeeded", 0) / total if total else None


# --- actions --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActionView:
    """One button of the dashboard: the action, its label, its URL and whether it is dangerous."""

    name: str
    label: str
    url: str
    danger: bool
    prompt: str
    wave_index: int | None = None


ACTIONS = (
    (Update.PAUSE, "Pause", False, "Pause: no new wave starts and nothing is promoted until someone resumes."),
    (Update.RESUME, "Resume", False, "Resume: the rollout continues where it was paused."),
    (Update.PROMOTE, "Promote", False, "Promote: the waiting wave is accepted and the next wave starts."),
    (Update.ABORT, "Abort", True, "Abort: stop now; devices keep what they installed and the change is cancelled."),
    (Update.ROLLBACK, "Roll back", True, "Roll back: every device that took the new release is offered the old one."),
)


@dataclass
class ActionsView:
    """The actions this person may take now, or why they may take none."""

    actions: list[ActionView]
    blocked_reason: str


def rollout_actions_for(user: User, rollout: Rollout) -> ActionsView:
    """Buttons for exactly the actions `rollout_action_refusal` (the rule the service raises) allows this person
    now, or one sentence saying why there are none."""
    refusal = rollout_action_refusal(user, rollout, Update.ABORT)
    if refusal is not None:
        # Abort is allowed in every unfinished phase: its refusal is the reason no action at all is possible.
        return ActionsView([], refusal.message)
    actions = []
    for name, label, danger, prompt in ACTIONS:
        if rollout_action_refusal(user, rollout, name) is None:
            wave_index = rollout.current_wave if name == Update.PROMOTE else None
            url = reverse("web-rollouts:act", args=[rollout.pk, name])
            actions.append(ActionView(name, label, url, danger, prompt, wave_index))
    return ActionsView(actions, "" if actions else "No action is possible in this state.")


# --- live workflow status -------------------------------------------------------------------------------------


@dataclass
class LiveStatus:
    """The workflow's own answer to the status query, or why there is none."""

    state: str  # "live" | "unreachable" | "disabled" | "finished"
    status: Any = None


# After a failed query, do not ask about the same rollout again for this long: its dashboard polls every 3 s and
# an unreachable server must not hold a request thread for the client's connect timeout on every poll.
UNREACHABLE_BACKOFF_SECONDS = 10.0
_unreachable_until: dict[str, float] = {}
_unreachable_lock = threading.Lock()


def rollout_live_status(rollout: Rollout) -> LiveStatus:
    """Ask the rollout's workflow for its status (never raises); the database projection is shown either way."""
    if rollout.status in ROLLOUT_TERMINAL:
        return LiveStatus("finished")
    if not settings.TEMPORAL_ENABLED:
        return LiveStatus("disabled")
    key = f"{settings.TEMPORAL_ADDRESS}/{settings.TEMPORAL_NAMESPACE}/{rollout.pk}"
    with _unreachable_lock:
        if _unreachable_until.get(key, 0.0) > time.monotonic():
            return LiveStatus("unreachable")
    from workflows.client import query_rollout_status

    try:
        result = query_rollout_status(rollout.pk)
    except Exception:  # noqa: BLE001 - a dashboard must never fail because Temporal did
        logger.exception("rollout %s: status query raised", rollout.pk)
        result = None
    if result is None:
        with _unreachable_lock:
            _unreachable_until[key] = time.monotonic() + UNREACHABLE_BACKOFF_SECONDS
        return LiveStatus("unreachable")
    return LiveStatus("live", result)
