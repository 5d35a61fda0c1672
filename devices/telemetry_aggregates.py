"""Telemetry aggregates: running sums per indicator, maintained in the transaction that stores the samples.

Three keys, each one row per indicator (count, sum, sum of squares):
- per device and release (DeviceTelemetryAggregate): one unit's history, kept after its raw samples are purged;
- per release and hardware model (ReleaseTelemetryAggregate): the baseline a later release is judged against, at
  most BASELINE_SAMPLES_PER_DEVICE samples of each device;
- per cohort and hardware model (CohortTelemetryAggregate): the candidate side of a health gate (a rollout's wave),
  one sample per deployment (the first stored).

Which release a sample measures is fixed when its batch is accepted: the release of the deployment the sample names
(the agent sends one sample per finished deployment, with the KPIs measured on the new image), else the version the
inventory says the device runs at that moment. The cohort is the caller's opaque label for the deployment's wave.

A batch is folded with one INSERT ... ON CONFLICT DO UPDATE per key, grouped in SQL over the rows just copied (all
of one device and one receipt time): additive upserts, so concurrent batches of other devices on the same aggregate
row serialise on that row's lock and neither is lost; rows are upserted in key order, so two batches never wait on
each other in opposite orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import connection

from devices.models import (
    CohortTelemetryAggregate,
    Device,
    DeviceTelemetryAggregate,
    ReleaseTelemetryAggregate,
    TelemetrySample,
)

MEAN = "mean"
PROPORTION = "proportion"
# How many samples of one device (per release and indicator) a release's baseline takes: its first ones.
BASELINE_SAMPLES_PER_DEVICE = 20


@dataclass(frozen=True)
class Indicator:
    """A post-update signal a health gate may judge: how it is computed from a sample and which way is worse."""

    name: str
    label: str
    kind: str  # MEAN (Welch's t-test on the values) or PROPORTION (Fisher's exact test on the events)
    higher_is_worse: bool
    sql: str  # the value of one sample (NULL: the sample does not carry it), over the sample table's columns
    unit: str = ""


# The one catalogue of gateable indicators (plans name them; the fold, the gate and the pages read it).
INDICATORS: dict[str, Indicator] = {
    indicator.name: indicator
    for indicator in (
        Indicator("boot_time_s", "Boot time", MEAN, True, "s.boot_time_s", "s"),
        Indicator(
            "unexpected_reboots",
            "Devices with unexpected reboots",
            PROPORTION,
            True,
            "CASE WHEN s.unexpected_reboots IS NULL THEN NULL WHEN s.unexpected_reboots > 0 THEN 1 ELSE 0 END",
        ),
        Indicator("install_duration_s", "Install duration", MEAN, True, "s.install_duration_s", "s"),
        Indicator("gps_fix_s", "GPS time to fix", MEAN, True, "s.gps_fix_s", "s"),
        Indicator(
            "sensor_calibration_failures",
            "Sensor calibration failures",
            PROPORTION,
            True,
            "CASE WHEN s.sensor_calibrated IS NULL THEN NULL WHEN s.sensor_calibrated THEN 0 ELSE 1 END",
        ),
        Indicator("link_kbps", "Link throughput", MEAN, False, "s.link_kbps", "kbit/s"),
    )
}


@dataclass(frozen=True)
class Summary:
    """Summary statistics of one indicator on one side of a comparison (exact integer sums)."""

    n: int = 0
    total: int = 0
    total_sq: int = 0

    def __add__(self, other: Summary) -> Summary:
        return Summary(self.n + other.n, self.total + other.total, self.total_sq + other.total_sq)

    @property
    def mean(self) -> float | None:
        return self.total / self.n if self.n else None

    @property
    def variance(self) -> float | None:
        """The sample variance (n - 1), computed from the exact sums before any rounding."""
        if self.n < 2:
            return None
        return (self.n * self.total_sq - self.total * self.total) / (self.n * (self.n - 1))


def _unpivot_sql() -> str:
    values = ", ".join(f"('{name}', ({indicator.sql})::bigint)" for name, indicator in INDICATORS.items())
    return f"CROSS JOIN LATERAL (VALUES {values}) AS v(indicator, value)"


def _fold_sql() -> str:
    samples = TelemetrySample._meta.db_table
    devices = Device._meta.db_table
    per_device = DeviceTelemetryAggregate._meta.db_table
    per_release = ReleaseTelemetryAggregate._meta.db_table
    per_cohort = CohortTelemetryAggregate._meta.db_table
    sums = "count(*), sum(value), sum(value * value), now()"
    add = "n = t.n + EXCLUDED.n, total = t.total + EXCLUDED.total, total_sq = t.total_sq + EXCLUDED.total_sq, updated_at = EXCLUDED.updated_at"
    return f"""
WITH s AS (
    SELECT s.id, s.deployment_id, s.release_version, s.cohort, v.indicator, v.value
    FROM {samples} s {_unpivot_sql()}
    WHERE s.device_id = %(device)s AND s.received_at = %(received_at)s AND s.release_version <> ''
      AND v.value IS NOT NULL
), first_of_deployment AS (
    -- A wave counts one sample per deployment (the agent sends one, when the deployment finishes): a device that
    -- re-sends or floods samples naming its deployment cannot outweigh the rest of its wave.
    SELECT DISTINCT ON (c.deployment_id) c.id FROM {samples} c
    WHERE c.device_id = %(device)s AND c.received_at = %(received_at)s AND c.cohort <> ''
      AND NOT EXISTS (SELECT 1 FROM {samples} e WHERE e.deployment_id = c.deployment_id AND e.id < c.id)
    ORDER BY c.deployment_id, c.id
), capped AS (
    -- A release's baseline takes at most BASELINE_SAMPLES_PER_DEVICE samples of each device and indicator (its first
    -- ones): a unit that reboots all day, or floods, cannot move the baseline its whole model is judged against.
    -- The per-device sums are read as they were before this statement (every CTE sees the same snapshot).
    -- A unit already at the cap is left out before the window (the usual case for a unit that sends big batches).
    SELECT r.release_version, r.indicator, r.value FROM (
        SELECT s.release_version, s.indicator, s.value, COALESCE(d.n, 0) AS prior,
               row_number() OVER (PARTITION BY s.release_version, s.indicator ORDER BY s.id) AS nth
        FROM s LEFT JOIN {per_device} d
          ON d.device_id = %(device)s AND d.release_version = s.release_version AND d.indicator = s.indicator
        WHERE COALESCE(d.n, 0) < {BASELINE_SAMPLES_PER_DEVICE}
    ) r
    WHERE r.nth + r.prior <= {BASELINE_SAMPLES_PER_DEVICE}
), model AS (
    SELECT hardware_model_id FROM {devices} WHERE id = %(device)s
), per_device AS (
    INSERT INTO {per_device} AS t (device_id, release_version, indicator, n, total, total_sq, updated_at)
    SELECT %(device)s, release_version, indicator, {sums} FROM s GROUP BY release_version, indicator
    ORDER BY release_version, indicator
    ON CONFLICT (device_id, release_version, indicator) DO UPDATE SET {add}
    RETURNING 1
), per_release AS (
    INSERT INTO {per_release} AS t (release_version, hardware_model_id, indicator, n, total, total_sq, updated_at)
    SELECT release_version, (SELECT hardware_model_id FROM model), indicator, {sums} FROM capped
    GROUP BY release_version, indicator ORDER BY release_version, indicator
    ON CONFLICT (release_version, hardware_model_id, indicator) DO UPDATE SET {add}
    RETURNING 1
)
INSERT INTO {per_cohort} AS t (cohort, hardware_model_id, indicator, n, total, total_sq, updated_at)
SELECT cohort, (SELECT hardware_model_id FROM model), indicator, {sums} FROM s
WHERE cohort <> '' AND id IN (SELECT id FROM first_of_deployment)
GROUP BY cohort, indicator ORDER BY cohort, indicator
ON CONFLICT (cohort, hardware_model_id, indicator) DO UPDATE SET {add}
"""


_FOLD_SQL: str | None = None


def telemetry_aggregates_fold(*, device_id: int, received_at: datetime) -> None:
    """Add the samples of one processed batch (one device, one receipt time) to every aggregate, in one statement
    inside the caller's transaction (the one that stored the samples)."""
    global _FOLD_SQL
    if _FOLD_SQL is None:
        _FOLD_SQL = _fold_sql()
    with connection.cursor() as cursor:
        cursor.execute(_FOLD_SQL, {"device": device_id, "received_at": received_at})


def _summary(row: tuple[int, Decimal, Decimal]) -> Summary:
    return Summary(int(row[0]), int(row[1]), int(row[2]))


def cohort_summaries(cohort: str, indicators: list[str]) -> dict[tuple[int, str], Summary]:
    """(hardware model id, indicator) -> the cohort's sums: one row per model and indicator."""
    rows = CohortTelemetryAggregate.objects.filter(cohort=cohort, indicator__in=indicators).values_list(
        "hardware_model_id", "indicator", "n", "total", "total_sq"
    )
    return {(model, indicator): _summary((n, total, total_sq)) for model, indicator, n, total, total_sq in rows}


def release_summaries(
    release_version: str, hardware_model_ids: list[int], indicators: list[str]
) -> dict[tuple[int, str], Summary]:
    """(hardware model id, indicator) -> the release's sums on those models: the baseline of a comparison."""
    rows = ReleaseTelemetryAggregate.objects.filter(
        release_version=release_version, hardware_model_id__in=hardware_model_ids, indicator__in=indicators
    ).values_list("hardware_model_id", "indicator", "n", "total", "total_sq")
    return {(model, indicator): _summary((n, total, total_sq)) for model, indicator, n, total, total_sq in rows}
