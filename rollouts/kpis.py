"""Rollout KPIs over time: deployment success rate, mean time to recover, share of devices on the latest release
per hardware model, rollbacks per release, and incidents contained (halts before the release left its pilot).
Read-only selectors; every figure comes from the deployments' own timestamps, so the numbers can be recomputed
(and audited) at any time.

Periods are UTC days or ISO weeks (Monday 00:00 UTC); the last period is the current, partial one.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection
from django.db.models import Count, Exists, OuterRef, Q
from django.utils import timezone

from devices.choices import DeviceStatus
from devices.firmware.models import FirmwareRelease
from devices.models import Device, HardwareModel
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, Rollout, Wave

DAY = "day"
WEEK = "week"
PERIOD_UNITS = (DAY, WEEK)
MAX_PERIODS = {DAY: 90, WEEK: 52}
DEFAULT_PERIODS = {DAY: 14, WEEK: 12}

# Outcomes that count for the success rate: a device that was cancelled or skipped never tried.
ATTEMPT_OUTCOMES = (
    DeploymentStatus.SUCCEEDED,
    DeploymentStatus.FAILED,
    DeploymentStatus.TIMED_OUT,
    DeploymentStatus.ROLLED_BACK,
)


def percent(value: float | None) -> str:
    """0.75 -> "75 %", 2/3 -> "66.7 %", None -> "—" (for tables)."""
    if value is None:
        return "—"
    return f"{100 * value:.1f}".removesuffix(".0") + " %"


@dataclass(frozen=True)
class Period:
    """One reporting period [start, end) in UTC."""

    start: datetime
    end: datetime
    label: str


def kpi_periods(*, unit: str, count: int, now: datetime | None = None) -> list[Period]:
    """The last `count` periods of `unit` (day or week), oldest first, ending with the one that holds `now`."""
    if unit not in PERIOD_UNITS:
        raise ValueError(f"unit must be one of {PERIOD_UNITS}")
    if not 1 <= count <= MAX_PERIODS[unit]:
        raise ValueError(f"count must be from 1 to {MAX_PERIODS[unit]}")
    now = (now or timezone.now()).astimezone(UTC)
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    step = timedelta(days=1) if unit == DAY else timedelta(weeks=1)
    current = today if unit == DAY else today - timedelta(days=today.weekday())
    periods = []
    for back in range(count - 1, -1, -1):
        start = current - back * step
        label = f"{start:%Y-%m-%d}" if unit == DAY else "{}-W{:02d}".format(*start.isocalendar()[:2])
        periods.append(Period(start, start + step, label))
    return periods


def _window(periods: list[Period]) -> Q:
    return Q(finished_at__gte=periods[0].start, finished_at__lt=periods[-1].end)


def _per_period(periods: list[Period], field_name: str) -> dict[str, Count]:
    return {
        f"p{i}": Count("id", filter=Q(**{f"{field_name}__gte": p.start, f"{field_name}__lt": p.end}))
        for i, p in enumerate(periods)
    }


# --- deployment success rate ----------------------------------------------------------------------------------


@dataclass
class SuccessRateRow:
    """Update deployments that finished in one period, by outcome."""

    period: Period
    succeeded: int = 0
    failed: int = 0
    timed_out: int = 0
    rolled_back: int = 0

    @property
    def attempted(self) -> int:
        return self.succeeded + self.failed + self.timed_out + self.rolled_back

    @property
    def rate(self) -> float | None:
        """succeeded / attempted (None when nothing finished in the period)."""
        return self.succeeded / self.attempted if self.attempted else None

    @property
    def rate_pct(self) -> str:
        return percent(self.rate)


def deployment_success_rate(periods: list[Period]) -> list[SuccessRateRow]:
    """Per period: update deployments that finished then, by outcome (cancelled and skipped ones never tried)."""
    rows = [SuccessRateRow(p) for p in periods]
    counts = (
        Deployment.objects.filter(_window(periods), kind=DeploymentKind.UPDATE, status__in=ATTEMPT_OUTCOMES)
        .order_by()
        .values("status")
        .annotate(**_per_period(periods, "finished_at"))
    )
    for by_status in counts:
        for i, row in enumerate(rows):
            setattr(row, by_status["status"], by_status[f"p{i}"])
    return rows


def success_rate_total(rows: list[SuccessRateRow]) -> SuccessRateRow | None:
    """All periods added up (None without periods)."""
    if not rows:
        return None
    total = SuccessRateRow(Period(rows[0].period.start, rows[-1].period.end, "All periods"))
    for row in rows:
        for name in ("succeeded", "failed", "timed_out", "rolled_back"):
            setattr(total, name, getattr(total, name) + getattr(row, name))
    return total


# --- mean time to recover -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """A halted rollout whose every rolled-back device is back on the rollback release."""

    rollout_id: int
    change_id: int
    release: str
    rollback_release: str
    halted_at: datetime
    recovered_at: datetime
    devices: int

    @property
    def duration(self) -> timedelta:
        return self.recovered_at - self.halted_at


@dataclass
class RecoveryRow:
    """Recoveries completed in one period and their mean duration."""

    period: Period
    recoveries: list[Recovery] = field(default_factory=list)

    @property
    def mean(self) -> timedelta | None:
        if not self.recoveries:
            return None
        return sum((r.duration for r in self.recoveries), timedelta()) / len(self.recoveries)


@dataclass
class MeanTimeToRecover:
    """MTTR per period, every recovery in the window, and the halted rollouts not (yet) fully recovered."""

    rows: list[RecoveryRow]
    recoveries: list[Recovery]
    unrecovered: list[int]

    @property
    def mean(self) -> timedelta | None:
        if not self.recoveries:
            return None
        return sum((r.duration for r in self.recoveries), timedelta()) / len(self.recoveries)


def _recovery_rows() -> list[tuple[int, int, int, datetime | None]]:
    """Per halted rollout: (rollout id, affected devices, restored devices, when the last of them was restored).

    A device is affected when it took the new image (its update succeeded) or the rollback saga offered it the
    rollback release (it took, or may have taken, the image); it is restored at its first successful rollback
    deployment. Two aggregate levels in one statement: per (rollout, device), then per rollout.
    """
    table = Deployment._meta.db_table
    rollouts = Rollout._meta.db_table
    sql = f"""
        SELECT per_device.rollout_id, COUNT(*), COUNT(per_device.restored_at), MAX(per_device.restored_at)
        FROM (
            SELECT d.rollout_id, d.device_id,
                   MIN(CASE WHEN d.kind = %s AND d.status = %s THEN d.finished_at END) AS restored_at,
                   MAX(CASE WHEN d.kind = %s OR d.status = %s THEN 1 ELSE 0 END) AS affected
            FROM {table} d JOIN {rollouts} r ON r.id = d.rollout_id
            WHERE r.halted_at IS NOT NULL
            GROUP BY d.rollout_id, d.device_id
        ) per_device
        WHERE per_device.affected = 1
        GROUP BY per_device.rollout_id
    """
    params = [DeploymentKind.ROLLBACK, DeploymentStatus.SUCCEEDED, DeploymentKind.ROLLBACK, DeploymentStatus.SUCCEEDED]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return [(rollout_id, affected, restored, at) for rollout_id, affected, restored, at in cursor.fetchall()]


def _aware(value: datetime | str | None) -> datetime | None:
    """A raw cursor's timestamp (SQLite answers text) as an aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def mean_time_to_recover(periods: list[Period]) -> MeanTimeToRecover:
    """Halt -> every affected device restored (its rollback deployment succeeded), for halted rollouts.

    Affected devices are those that took the new image (update succeeded) or were offered the rollback; a rollout
    counts in the period in which its last affected device was restored. Rollouts halted in the window with an
    affected device not restored (rollback still running, a rollback failed or timed out, or aborted without a
    rollback while devices run the release) are listed as unrecovered. A halt that affected no device (stopped
    before anyone installed) has nothing to recover and is not counted.
    """
    rows_by_rollout = {pk: (affected, restored, _aware(at)) for pk, affected, restored, at in _recovery_rows()}
    start, end = periods[0].start, periods[-1].end
    recovered_ids = [
        pk
        for pk, (affected, restored, at) in rows_by_rollout.items()
        if affected == restored and at is not None and start <= at < end
    ]
    details = Rollout.objects.filter(pk__in=recovered_ids).values_list(
        "pk", "change_id", "release__version", "rollback_release__version", "halted_at"
    )
    recoveries = sorted(
        (
            Recovery(pk, change_id, release, rollback, halted_at, recovered_at, rows_by_rollout[pk][1])
            for pk, change_id, release, rollback, halted_at in details
            if halted_at is not None and (recovered_at := rows_by_rollout[pk][2]) is not None
        ),
        key=lambda r: (r.recovered_at, r.rollout_id),
    )
    rows = [RecoveryRow(p) for p in periods]
    starts = [p.start for p in periods]
    for recovery in recoveries:
        rows[bisect.bisect_right(starts, recovery.recovered_at) - 1].recoveries.append(recovery)
    unrecovered = sorted(
        Rollout.objects.filter(
            pk__in=[pk for pk, (affected, restored, _at) in rows_by_rollout.items() if restored < affected],
            halted_at__gte=start,
            halted_at__lt=end,
        ).values_list("pk", flat=True)
    )
    return MeanTimeToRecover(rows, recoveries, unrecovered)


# --- incidents contained --------------------------------------------------------------------------------------


@dataclass
class IncidentRow:
    """Halts in one period, and how many of them stopped the release before it left its pilot wave."""

    period: Period
    halts: int = 0
    contained: int = 0

    @property
    def escaped(self) -> int:
        return self.halts - self.contained

    @property
    def share(self) -> float | None:
        return self.contained / self.halts if self.halts else None

    @property
    def share_pct(self) -> str:
        return percent(self.share)


@dataclass
class IncidentsContained:
    """Incidents contained per period, the contained and escaped rollouts (ids) of the window, and the totals."""

    rows: list[IncidentRow]
    contained: list[int]
    escaped: list[int]

    @property
    def halts(self) -> int:
        return len(self.contained) + len(self.escaped)

    @property
    def share(self) -> float | None:
        return len(self.contained) / self.halts if self.halts else None

    @property
    def share_pct(self) -> str:
        return percent(self.share)


PILOT_WAVE = 0


def incidents_contained(periods: list[Period]) -> IncidentsContained:
    """Per period (by halt time): rollouts halted, and those halted before the release left its pilot wave.

    Contained: no wave after the pilot (index 0) was ever opened and no device outside the pilot was given an
    update deployment of the release. Every halt is an incident (a gate, breaker or safety net stopped the
    release); a rollout halted twice counts once, at its latest halt.
    """
    beyond_pilot = Wave.objects.filter(rollout=OuterRef("pk"), index__gt=PILOT_WAVE).filter(
        Q(started_at__isnull=False) | Q(deployments__kind=DeploymentKind.UPDATE)
    )
    halted = (
        Rollout.objects.filter(halted_at__gte=periods[0].start, halted_at__lt=periods[-1].end)
        .annotate(left_pilot=Exists(beyond_pilot))
        .order_by("halted_at", "pk")
        .values_list("pk", "halted_at", "left_pilot")
    )
    rows = [IncidentRow(p) for p in periods]
    starts = [p.start for p in periods]
    contained: list[int] = []
    escaped: list[int] = []
    for pk, halted_at, left_pilot in halted:
        if halted_at is None:  # never: the filter needs a halt time
            continue
        row = rows[bisect.bisect_right(starts, halted_at) - 1]
        row.halts += 1
        if left_pilot:
            escaped.append(pk)
        else:
            row.contained += 1
            contained.append(pk)
    return IncidentsContained(rows, contained, escaped)


# --- share of devices on the latest release per hardware model ------------------------------------------------


@dataclass(frozen=True)
class SharePoint:
    """One hardware model at one moment: devices in the fleet and how many ran its latest release."""

    at: datetime
    latest: str
    devices: int
    on_latest: int

    @property
    def share(self) -> float | None:
        return self.on_latest / self.devices if self.devices else None

    @property
    def share_pct(self) -> str:
        return percent(self.share)


@dataclass
class ModelShare:
    """One hardware model's share on its latest release, measured at the end of each period."""

    model: str
    points: list[SharePoint]

    @property
    def current(self) -> SharePoint:
        return self.points[-1]


def _latest_by_model(moments: list[datetime]) -> dict[int, list[str]]:
    """{model id: [latest release version at each moment ("" when none existed yet)]}."""
    rows = FirmwareRelease.hardware_models.through.objects.values_list(
        "hardwaremodel_id",
        "firmwarerelease__version",
        "firmwarerelease__release_counter",
        "firmwarerelease__created_at",
    )
    releases: dict[int, list[tuple[int, datetime, str]]] = defaultdict(list)
    for model_id, version, counter, created_at in rows:
        releases[model_id].append((counter, created_at, version))
    latest: dict[int, list[str]] = {}
    for model_id, candidates in releases.items():
        per_moment = []
        for moment in moments:
            known = [(counter, version) for counter, created_at, version in candidates if created_at <= moment]
            per_moment.append(max(known)[1] if known else "")
        latest[model_id] = per_moment
    return latest


def _version_at(history: list[tuple[datetime, str, str]], installed: str, moment: datetime) -> str:
    """A device's version at `moment` from its successful deployments (finished_at, version, version before).

    After the last one it runs what the inventory says now; before one it ran the version that preceded it.
    """
    for position, (finished_at, _version, from_version) in enumerate(history):
        if finished_at > moment:
            return history[position - 1][1] if position else from_version
    return installed


def latest_release_share(periods: list[Period], now: datetime | None = None) -> list[ModelShare]:
    """Per hardware model: devices on the model's latest release (highest release counter) at each period's end.

    The version a device ran at a past moment is rebuilt from its successful deployments (update: it ran the
    change's rollback release before; rollback: it ran the rolled-out release before); a device without a later
    successful deployment runs what the inventory says now. Decommissioned devices are left out; a device counts
    from the moment it entered the inventory.
    """
    now = now or timezone.now()
    moments = [min(p.end, now) for p in periods]
    latest = _latest_by_model(moments)
    fleet = Device.objects.exclude(status=DeviceStatus.DECOMMISSIONED)
    touched = Deployment.objects.filter(status=DeploymentStatus.SUCCEEDED, finished_at__gt=moments[0]).values(
        "device_id"
    )
    totals: dict[int, list[int]] = defaultdict(lambda: [0] * len(moments))
    on_latest: dict[int, list[int]] = defaultdict(lambda: [0] * len(moments))
    # Devices whose version did not change in the window: one aggregate per (model, version).
    steady = (
        fleet.exclude(pk__in=touched)
        .order_by()
        .values("hardware_model_id", "installed_version")
        .annotate(**{f"n{i}": Count("id", filter=Q(created_at__lte=m)) for i, m in enumerate(moments)})
    )
    for row in steady:
        model_id = row["hardware_model_id"]
        for i in range(len(moments)):
            totals[model_id][i] += row[f"n{i}"]
            if latest.get(model_id) and row["installed_version"] == latest[model_id][i]:
                on_latest[model_id][i] += row[f"n{i}"]
    # Devices updated or rolled back in the window: rebuild their version at each moment.
    history: dict[int, list[tuple[datetime, str, str]]] = defaultdict(list)
    successes = (
        Deployment.objects.filter(status=DeploymentStatus.SUCCEEDED, device_id__in=touched, finished_at__isnull=False)
        .order_by("device_id", "finished_at", "pk")
        .values_list(
            "device_id", "finished_at", "release__version", "kind", "rollout__release__version",
            "rollout__rollback_release__version",
        )
    )  # fmt: skip
    for device_id, finished_at, version, kind, rolled_out, rollback_to in successes.iterator(chunk_size=5000):
        if finished_at is None:  # never: the query excludes them
            continue
        before = rollback_to if kind == DeploymentKind.UPDATE else rolled_out
        history[device_id].append((finished_at, version, before))
    for device_id, model_id, created_at, installed in fleet.filter(pk__in=touched).values_list(
        "pk", "hardware_model_id", "created_at", "installed_version"
    ):
        for i, moment in enumerate(moments):
            if created_at > moment:
                continue
            totals[model_id][i] += 1
            if latest.get(model_id) and _version_at(history[device_id], installed, moment) == latest[model_id][i]:
                on_latest[model_id][i] += 1
    shares = []
    for model_id, name in HardwareModel.objects.order_by("name").values_list("pk", "name"):
        versions = latest.get(model_id, [""] * len(moments))
        points = [
            SharePoint(m, versions[i], totals[model_id][i], on_latest[model_id][i]) for i, m in enumerate(moments)
        ]
        if any(point.devices for point in points):
            shares.append(ModelShare(name, points))
    return shares


# --- rollbacks per release ------------------------------------------------------------------------------------


@dataclass
class ReleaseRollbacks:
    """One release: rollouts of it that ended rolled back per period, devices restored, devices that fell back."""

    release: str
    per_period: list[int]
    devices_restored: int
    device_fallbacks: int

    @property
    def total(self) -> int:
        return sum(self.per_period)


def rollbacks_per_release(periods: list[Period]) -> list[ReleaseRollbacks]:
    """Per release: rollouts that ended rolled back in each period (by finish time), the devices the rollback
    saga restored in those rollouts, and the update deployments in the window whose device fell back on its own
    (A/B fallback after a failed boot). Releases with neither are left out; most rollbacks first."""
    window = _window(periods)
    per_release = (
        Rollout.objects.filter(window, status=RolloutStatus.ROLLED_BACK)
        .order_by()
        .values("release__version")
        .annotate(**_per_period(periods, "finished_at"))
    )
    restored = dict(
        Deployment.objects.filter(
            kind=DeploymentKind.ROLLBACK,
            status=DeploymentStatus.SUCCEEDED,
            rollout__status=RolloutStatus.ROLLED_BACK,
            rollout__finished_at__gte=periods[0].start,
            rollout__finished_at__lt=periods[-1].end,
        )
        .order_by()
        .values("rollout__release__version")
        .annotate(n=Count("id"))
        .values_list("rollout__release__version", "n")
    )
    fallbacks = dict(
        Deployment.objects.filter(window, kind=DeploymentKind.UPDATE, status=DeploymentStatus.ROLLED_BACK)
        .order_by()
        .values("release__version")
        .annotate(n=Count("id"))
        .values_list("release__version", "n")
    )
    rows = {
        row["release__version"]: ReleaseRollbacks(
            row["release__version"],
            [row[f"p{i}"] for i in range(len(periods))],
            restored.get(row["release__version"], 0),
            fallbacks.get(row["release__version"], 0),
        )
        for row in per_release
    }
    for version, count in fallbacks.items():
        rows.setdefault(version, ReleaseRollbacks(version, [0] * len(periods), 0, count))
    return sorted(rows.values(), key=lambda r: (-r.total, -r.device_fallbacks, r.release))


# --- everything for the KPI page ------------------------------------------------------------------------------


@dataclass
class KpiReport:
    """The five KPIs over the same periods."""

    unit: str
    periods: list[Period]
    success: list[SuccessRateRow]
    success_total: SuccessRateRow | None
    recovery: MeanTimeToRecover
    shares: list[ModelShare]
    rollbacks: list[ReleaseRollbacks]
    incidents: IncidentsContained


def kpi_report(*, unit: str = WEEK, count: int | None = None, now: datetime | None = None) -> KpiReport:
    """All KPIs for the last `count` periods of `unit` (default 12 weeks or 14 days)."""
    now = now or timezone.now()
    periods = kpi_periods(unit=unit, count=count or DEFAULT_PERIODS[unit], now=now)
    success = deployment_success_rate(periods)
    return KpiReport(
        unit=unit,
        periods=periods,
        success=success,
        success_total=success_rate_total(success),
        recovery=mean_time_to_recover(periods),
        shares=latest_release_share(periods, now=now),
        rollbacks=rollbacks_per_release(periods),
        incidents=incidents_contained(periods),
    )
