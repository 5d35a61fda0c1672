"""The fleet-wide safety net: a spike of rollbacks or unexpected reboots across every rollout of a release pauses
each running rollout of that release (through the workflow, as an operator's pause goes) and raises one alert.

Rates over the last OTA_FLEET_WINDOW_SECONDS, across all rollouts of one release:
- rollback rate: update deployments that ended rolled back (the device fell back to its old image) among those that
  finished (succeeded, failed or rolled back) in the window; read through the (release, kind, finished_at) index.
- unexpected-reboot rate: devices that reported unexpected reboots among the devices that sent telemetry about a
  deployment of the release in the window; read from TelemetrySample by its deployment_id index, bounded by the
  window (the telemetry aggregates of the health gates may take this over).
A rate is judged only once OTA_FLEET_MIN_SAMPLE deployments (devices) count; a limit of 0 is off.

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
from django.db.models import Count, Q
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.audit.records import record_decision
from devices.firmware.models import FirmwareRelease
from devices.models import TelemetrySample
from ota_project.alerts.choices import AlertKind, AlertSeverity
from ota_project.alerts.services import raise_alert
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, Rollout

logger = logging.getLogger(__name__)

SAFETY_ACTOR = "fleet-safety"
PAUSE_REQUESTED = "rollout.safety_pause_requested"
# The rollouts the safety net pauses (the phases the workflow accepts a pause in).
PAUSABLE_ROLLOUTS = (RolloutStatus.RUNNING, RolloutStatus.AWAITING_PROMOTION)
_FINISHED = (DeploymentStatus.SUCCEEDED, DeploymentStatus.FAILED, DeploymentStatus.ROLLED_BACK)
# At most one check per release in this many seconds when triggered by reports (the beat check runs anyway).
CHECK_THROTTLE_SECONDS = 5


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

    @property
    def rollback_rate(self) -> float:
        return self.rolled_back / self.finished if self.finished else 0.0

    @property
    def reboot_rate(self) -> float:
        return self.rebooting_devices / self.reporting_devices if self.reporting_devices else 0.0


@dataclass(frozen=True)
class Breach:
    """One rate over its limit: which alert kind, the words for it, the rate, its limit and its sample."""

    kind: str
    what: str
    rate: float
    limit: float
    sample: int


def fleet_rates(*, release_id: int, now: datetime | None = None) -> FleetRates:
    """The release's rollback and unexpected-reboot rates over the window (two indexed, window-bounded queries)."""
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
    of_release = Deployment.objects.filter(release_id=release_id, kind=DeploymentKind.UPDATE).values("pk")
    telemetry = TelemetrySample.objects.filter(deployment_id__in=of_release, reported_at__gte=since).aggregate(
        reporting=Count("device_id", distinct=True),
        rebooting=Count("device_id", distinct=True, filter=Q(unexpected_reboots__gt=0)),
    )
    return FleetRates(
        release_id=release_id,
        version=release.version,
        window_seconds=window,
        finished=deployments["finished"],
        rolled_back=deployments["rolled_back"],
        reporting_devices=telemetry["reporting"],
        rebooting_devices=telemetry["rebooting"],
    )


def fleet_breaches(rates: FleetRates) -> list[Breach]:
    """The rates over their limits, judged only with at least OTA_FLEET_MIN_SAMPLE in the sample (pure)."""
    minimum = max(1, settings.OTA_FLEET_MIN_SAMPLE)
    checks = (
        (AlertKind.FLEET_ROLLBACK_RATE, "rollback", rates.rollback_rate, settings.OTA_FLEET_ROLLBACK_RATE_LIMIT, rates.finished),
        (AlertKind.FLEET_REBOOT_RATE, "unexpected-reboot", rates.reboot_rate, settings.OTA_FLEET_REBOOT_RATE_LIMIT, rates.reporting_devices),
    )  # fmt: skip
    return [
        Breach(str(kind), what, rate, limit, sample)
        for kind, what, rate, limit, sample in checks
        if limit > 0 and sample >= minimum and rate > limit
    ]


def _summary(breach: Breach, rates: FleetRates, rollouts: list[Rollout]) -> str:
    paused = ", ".join(f"rollout {r.pk}" for r in rollouts) or "no running rollout"
    return (
        f"Across all rollouts of release {rates.version}, the {breach.what} rate over the last "
        f"{rates.window_seconds // 60} minutes is {breach.rate:.1%} of {breach.sample} "
        f"(limit {breach.limit:.1%}). The safety net pauses every running rollout of the release ({paused}); "
        "look at the evidence before resuming any of them."
    )


@transaction.atomic
def fleet_safety_check(*, release_id: int, now: datetime | None = None) -> list[int]:
    """Judge the release's fleet-wide rates; on a breach raise the alert and ask each running rollout of the release
    to pause (once per alert and rollout). Returns the rollouts asked to pause by this call."""
    now = now or timezone.now()
    rates = fleet_rates(release_id=release_id, now=now)
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
