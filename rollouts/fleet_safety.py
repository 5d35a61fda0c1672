"""The fleet-wide safety net: a spike of rollbacks or unexpected reboots across every rollout of a release pauses
each running rollout of that release (through the workflow, as an operator's pause goes) and raises one alert.

Rates over the last OTA_FLEET_WINDOW_SECONDS, across all rollouts of one release:
- rollback rate: update deployments that ended rolled back (the device fell back to its old image) among those that
  finished (succeeded, failed or rolled back) in the window; read through the (release, kind, finished_at) index.
- unexpected-reboot rate: update deployments whose post-update sample reported unexpected reboots among those whose
  post-update sample arrived in the window. Read from the telemetry aggregates of the health gates, never from raw
  samples (they are purged after OTA_TELEMETRY_RETENTION_DAYS, and a release's samples grow with the fleet): each
  wave's cohort aggregate counts one sample per deployment, its first, so the release's cumulative counts are the
  sums over its waves (a few rows per wave, whatever the fleet's size).
  The aggregates have no time axis, so the window is the growth of those cumulative counts since a snapshot: every
  check stores the release's counts (FleetSignalSnapshot) and reads the growth since the newest snapshot taken at
  most SNAPSHOT_TOLERANCE before the window's start, so the span measured is the window plus at most that tolerance
  (pruned: older snapshots are deleted). A release whose first rollout began inside the window counts from zero (no
  sample of it can be older). Otherwise, without such a snapshot (the release was not checked around the window's
  start: its rollouts were paused, or checks were down), the growth since the oldest later snapshot is read, a
  shorter span; with none at all the check only stores its snapshot, and the reboot rate is judged from the next
  check on. The span measured is in the rates and the alert's evidence (`reboot_span_seconds`), never assumed.
A rate is judged only once OTA_FLEET_MIN_SAMPLE deployments count; a limit of 0 is off.

When a rate is over its limit: one alert per (kind, release) while it is live (`raise_alert` deduplicates, so a
persisting spike counts occurrences instead of notifying again), and for each running rollout of the release one
decision record `rollout.safety_pause_requested` (step key per alert and rollout: asked once per alert, so an
operator who resumes after looking is not overruled by the same alert) whose commit sends the pause to the
workflow. The workflow's authorize activity accepts a pause without a person only when that request is the latest
word on the rollout in the decision record (`safety_pause_pending`): a forged pause finds none and is refused.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.cache import cache
from django.db import transaction
from django.db.models import Count, Min, Q, Sum
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.audit.records import record_decision
from devices.firmware.models import FirmwareRelease
from devices.models import CohortTelemetryAggregate
from ota_project.alerts.choices import AlertKind, AlertSeverity
from ota_project.alerts.services import raise_alert
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, FleetSignalSnapshot, Rollout, Wave
from rollouts.signal_gates import wave_cohort

logger = logging.getLogger(__name__)

SAFETY_ACTOR = "fleet-safety"
PAUSE_REQUESTED = "rollout.safety_pause_requested"
# The rollouts the safety net pauses (the phases the workflow accepts a pause in).
PAUSABLE_ROLLOUTS = (RolloutStatus.RUNNING, RolloutStatus.AWAITING_PROMOTION)
_FINISHED = (DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK)
# At most one check per release in this many seconds when triggered by reports (the beat check runs anyway).
CHECK_THROTTLE_SECONDS = 5
# The aggregates' indicator behind the unexpected-reboot rate (per sample: 1 if it reported reboots, else 0).
REBOOT_INDICATOR = "unexpected_reboots"


def snapshot_tolerance() -> timedelta:
    """How much older than the window's start a snapshot may be and still start the window: two beat periods."""
    return timedelta(seconds=2 * max(float(settings.OTA_FLEET_CHECK_SECONDS), CHECK_THROTTLE_SECONDS))


@dataclass(frozen=True)
class FleetRates:
    """A release's fleet-wide rates over the window, with the counts behind them."""

    release_id: int
    version: str
    window_seconds: int
    finished: int
    rolled_back: int
    reporting_devices: int
    rebooting_devices: int
    # The span the reboot counts cover (see the module's docstring); 0: not measured yet.
    reboot_span_seconds: int

    @property
    def rollback_rate(self) -> float:
        return self.rolled_back / self.finished if self.finished else 0.0

    @property
    def reboot_rate(self) -> float:
        return self.rebooting_devices / self.reporting_devices if self.reporting_devices else 0.0


@dataclass(frozen=True)
class Breach:
    """One rate over its limit: which alert kind, the words for it, the rate, its limit, its sample and the span of
    time it covers."""

    kind: str
    what: str
    rate: float
    limit: float
    sample: int
    span_seconds: int


@dataclass(frozen=True)
class RebootCounts:
    """A release's cumulative counts of post-update samples (reporting) and of those with reboots, at one time."""

    at: datetime
    reporting: int
    rebooting: int


def release_reboot_counts(*, release_id: int, now: datetime) -> RebootCounts:
    """The release's cumulative counts over every wave of its rollouts, from the cohort aggregates (first sample per
    deployment), summed over hardware models: one indexed read of a few rows per wave."""
    cohorts = [
        wave_cohort(pk) for pk in Wave.objects.filter(rollout__release_id=release_id).values_list("pk", flat=True)
    ]
    sums = CohortTelemetryAggregate.objects.filter(cohort__in=cohorts, indicator=REBOOT_INDICATOR).aggregate(
        reporting=Sum("n"), rebooting=Sum("total")
    )
    return RebootCounts(now, int(sums["reporting"] or 0), int(sums["rebooting"] or 0))


def _window_start_counts(*, release_id: int, since: datetime, current: RebootCounts) -> RebootCounts:
    """The counts the window's growth is measured from (the rules are in the module's docstring)."""
    snapshots = FleetSignalSnapshot.objects.filter(release_id=release_id)
    at_start = (
        snapshots.filter(taken_at__lte=since, taken_at__gte=since - snapshot_tolerance()).order_by("-taken_at").first()
    )
    if at_start is not None:
        return RebootCounts(at_start.taken_at, at_start.reporting, at_start.rebooting)
    first_rollout = Rollout.objects.filter(release_id=release_id).aggregate(at=Min("created_at"))["at"]
    if first_rollout is None or first_rollout >= since:
        return RebootCounts(first_rollout or current.at, 0, 0)
    later = snapshots.filter(taken_at__gt=since, taken_at__lte=current.at).order_by("taken_at").first()
    if later is not None:
        return RebootCounts(later.taken_at, later.reporting, later.rebooting)
    return current


def fleet_rates(*, release_id: int, now: datetime | None = None) -> FleetRates:
    """The release's rollback and unexpected-reboot rates over the window: an indexed, window-bounded query on the
    deployments and a few aggregate and snapshot rows, whatever the fleet's size. Read-only."""
    now = now or timezone.now()
    window = settings.OTA_FLEET_WINDOW_SECONDS
    since = now - timedelta(seconds=window)
    release = FirmwareRelease.objects.only("version").get(pk=release_id)
    deployments = Deployment.objects.filter(
        release_id=release_id, kind=DeploymentKind.UPDATE, finished_at__gte=since, status__in=_FINISHED
    ).aggregate(
        finished=Count("pk"),
        rolled_back=Count("pk", filter=Q(status=DeploymentStatus.ROLLED_BACK)),
    )
    current = release_reboot_counts(release_id=release_id, now=now)
    start = _window_start_counts(release_id=release_id, since=since, current=current)
    return FleetRates(
        release_id=release_id,
        version=release.version,
        window_seconds=window,
        finished=deployments["finished"],
        rolled_back=deployments["rolled_back"],
        reporting_devices=current.reporting - start.reporting,
        rebooting_devices=current.rebooting - start.rebooting,
        reboot_span_seconds=int((now - start.at).total_seconds()),
    )


def fleet_snapshot_store(*, release_id: int, now: datetime) -> None:
    """Store the release's cumulative counts for later windows and drop the snapshots no window can start from
    (older than the newest one at or before the current window's start)."""
    counts = release_reboot_counts(release_id=release_id, now=now)
    FleetSignalSnapshot.objects.create(
        release_id=release_id, taken_at=now, reporting=counts.reporting, rebooting=counts.rebooting
    )
    since = now - timedelta(seconds=settings.OTA_FLEET_WINDOW_SECONDS)
    snapshots = FleetSignalSnapshot.objects.filter(release_id=release_id)
    oldest_needed = snapshots.filter(taken_at__lte=since).order_by("-taken_at").values_list("taken_at", flat=True)
    cutoff = oldest_needed.first()
    if cutoff is not None:
        snapshots.filter(taken_at__lt=cutoff).delete()


def fleet_breaches(rates: FleetRates) -> list[Breach]:
    """The rates over their limits, judged only with at least OTA_FLEET_MIN_SAMPLE in the sample (pure)."""
    minimum = max(1, settings.OTA_FLEET_MIN_SAMPLE)
    checks = (
        (AlertKind.FLEET_ROLLBACK_RATE, "rollback", rates.rollback_rate, settings.OTA_FLEET_ROLLBACK_RATE_LIMIT, rates.finished, rates.window_seconds),
        (AlertKind.FLEET_REBOOT_RATE, "unexpected-reboot", rates.reboot_rate, settings.OTA_FLEET_REBOOT_RATE_LIMIT, rates.reporting_devices, rates.reboot_span_seconds),
    )  # fmt: skip
    return [
        Breach(str(kind), what, rate, limit, sample, span)
        for kind, what, rate, limit, sample, span in checks
        if limit > 0 and sample >= minimum and rate > limit
    ]


def _summary(breach: Breach, rates: FleetRates, rollouts: list[Rollout]) -> str:
    paused = ", ".join(f"rollout {r.pk}" for r in rollouts) or "no running rollout"
    return (
        f"Across all rollouts of release {rates.version}, the {breach.what} rate over the last "
        f"{max(1, breach.span_seconds // 60)} minutes is {breach.rate:.1%} of {breach.sample} "
        f"(limit {breach.limit:.1%}). The safety net pauses every running rollout of the release ({paused}); "
        "look at the evidence before resuming any of them."
    )


@transaction.atomic
def fleet_safety_check(*, release_id: int, now: datetime | None = None) -> list[int]:
    """Judge the release's fleet-wide rates; on a breach raise the alert and ask each running rollout of the release
    to pause (once per alert and rollout). Returns the rollouts asked to pause by this call."""
    now = now or timezone.now()
    rates = fleet_rates(release_id=release_id, now=now)
    fleet_snapshot_store(release_id=release_id, now=now)
    asked: list[int] = []
    for breach in fleet_breaches(rates):
        rollouts = list(Rollout.objects.filter(release_id=release_id, status__in=PAUSABLE_ROLLOUTS).order_by("pk"))
        summary = _summary(breach, rates, rollouts)
        alert = raise_alert(
            kind=breach.kind,
            dedup_key=f"{breach.kind}:release:{release_id}",
            title=f"Fleet-wide {breach.what} rate {breach.rate:.0%} on release {rates.version}",
            summary=summary,
            link=f"/rollouts/{rollouts[0].pk}/" if rollouts else "/rollouts/",
            evidence={
                **asdict(rates),
                "rate": round(breach.rate, 4),
                "limit": breach.limit,
                "minimum_sample": settings.OTA_FLEET_MIN_SAMPLE,
                "rollouts_paused": [r.pk for r in rollouts],
                "measured_at": now.isoformat(),
            },
            severity=AlertSeverity.CRITICAL,
        )
        for rollout in rollouts:
            step_key = f"fleet-safety:alert:{alert.pk}:rollout:{rollout.pk}"
            if DecisionRecord.objects.filter(step_key=step_key).exists():
                continue  # asked before for this alert: a person may have resumed it since, on purpose
            record_decision(
                actor=None,
                action=PAUSE_REQUESTED,
                object_type="rollout",
                object_id=rollout.pk,
                after={"alert": alert.pk, "kind": breach.kind, "rate": round(breach.rate, 4), "limit": breach.limit},
                reason=summary,
                system_actor=SAFETY_ACTOR,
                step_key=step_key,
            )
            asked.append(rollout.pk)
    if asked:
        transaction.on_commit(lambda: _enqueue_pauses(asked))
    return asked


def _enqueue_pauses(rollout_ids: list[int]) -> None:
    from rollouts.tasks import fleet_safety_pause_task

    for rollout_id in rollout_ids:
        try:
            fleet_safety_pause_task.delay(rollout_id)
        except Exception:  # noqa: BLE001 - a broker down: the rollout's request stays pending for the beat check
            logger.exception("could not enqueue the safety pause of rollout %s", rollout_id)


def fleet_safety_check_soon(release_id: int) -> None:
    """After the report commits, check the release (at most once per CHECK_THROTTLE_SECONDS per release)."""

    def enqueue() -> None:
        from rollouts.tasks import fleet_safety_check_task

        if not cache.add(f"fleet-safety-check:{release_id}", 1, timeout=CHECK_THROTTLE_SECONDS):
            return
        try:
            fleet_safety_check_task.delay(release_id)
        except Exception:  # noqa: BLE001 - the periodic check covers it
            logger.exception("could not enqueue the fleet safety check of release %s", release_id)

    transaction.on_commit(enqueue)


def safety_pause_pending(rollout_id: int) -> bool:
    """True when the latest of the safety net's request, a pause and a resume on the rollout is the safety net's
    request: the database's proof behind a pause that no person sent (spent by the pause it allows)."""
    latest = (
        DecisionRecord.objects.filter(
            object_type="rollout",
            object_id=str(rollout_id),
            action__in=(PAUSE_REQUESTED, "rollout.pause", "rollout.resume"),
        )
        .order_by("-seq")
        .values_list("action", flat=True)
        .first()
    )
    return latest == PAUSE_REQUESTED


def safety_pauses_pending() -> list[int]:
    """Running rollouts whose safety pause was asked and not yet carried out (a lost task, Temporal down)."""
    return [
        rollout_id
        for rollout_id in Rollout.objects.filter(status__in=PAUSABLE_ROLLOUTS).values_list("pk", flat=True)
        if safety_pause_pending(rollout_id)
    ]


def releases_to_check() -> list[int]:
    """Releases with a running rollout (what the periodic check looks at)."""
    return sorted(
        set(Rollout.objects.filter(status__in=PAUSABLE_ROLLOUTS).values_list("release_id", flat=True).distinct())
    )
