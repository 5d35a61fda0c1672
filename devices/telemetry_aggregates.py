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

Batches are folded by one prepared statement, an INSERT ... ON CONFLICT DO UPDATE per key, grouped in SQL over the
rows just copied (each batch's rows are those of one device and one receipt time; a task folds one or several) column-wise (one pass, each indicator a column, unpivoted
once summed): additive upserts, so concurrent batches of other devices on the same aggregate row serialise on that
row's lock and neither is lost; rows are upserted in key order, so two batches never wait on each other in opposite
orders.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from devices.models import (
    CohortTelemetryAggregate,
    Device,
    DeviceTelemetryAggregate,
    ReleaseTelemetryAggregate,
    TelemetrySample,
)
from ota_project.compiled_queries import prepared_cursor

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
    """One row per sample and indicator, (indicator, value), over the sample table's alias `s` (what a computation
    from the raw samples groups by; the fold sums column-wise instead)."""
    values = ", ".join(f"('{name}', ({indicator.sql})::bigint)" for name, indicator in INDICATORS.items())
    return f"CROSS JOIN LATERAL (VALUES {values}) AS v(indicator, value)"


def _column(position: int) -> str:
    """The name of an indicator's value column in the fold (by its position in INDICATORS)."""
    return f"v{position}"


def _sums_sql(source: str, condition: str = "") -> str:
    """count, sum and sum of squares of every indicator's column over `source`, each as n<i>, t<i>, q<i>; with
    `condition` (a format string over the position), only the values of the rows it holds for."""
    parts = []
    for position in range(len(INDICATORS)):
        value = f"{source}.{_column(position)}"
        only = f" FILTER (WHERE {condition.format(position)})" if condition else ""
        parts.append(
            f"count({value}){only} AS n{position}, sum({value}){only} AS t{position}, "
            f"sum({value} * {value}){only} AS q{position}"
        )
    return ", ".join(parts)


def _unpivot_sums_sql(source: str) -> str:
    """One row per indicator with a value among `source`'s sums: (indicator, n, total, total_sq)."""
    values = ", ".join(
        f"('{name}', {source}.n{position}, {source}.t{position}, {source}.q{position})"
        for position, name in enumerate(INDICATORS)
    )
    return f"CROSS JOIN LATERAL (VALUES {values}) AS u(indicator, n, total, total_sq)"


def _fold_sql() -> str:
    samples = TelemetrySample._meta.db_table
    devices = Device._meta.db_table
    per_device = DeviceTelemetryAggregate._meta.db_table
    per_release = ReleaseTelemetryAggregate._meta.db_table
    per_cohort = CohortTelemetryAggregate._meta.db_table
    positions = range(len(INDICATORS))
    values = ", ".join(f"({indicator.sql})::bigint AS {_column(i)}" for i, indicator in enumerate(INDICATORS.values()))
    priors = ", ".join(
        f"COALESCE(max(n) FILTER (WHERE indicator = '{name}'), 0) AS p{i}" for i, name in enumerate(INDICATORS)
    )
    with_priors = ", ".join(
        [*(f"s.{_column(i)}" for i in positions), *(f"COALESCE(p.p{i}, 0) AS p{i}" for i in positions)]
    )
    under_cap = " OR ".join(f"({_column(i)} IS NOT NULL AND p{i} < {BASELINE_SAMPLES_PER_DEVICE})" for i in positions)
    numbered = ", ".join(
        [*(f"{_column(i)}, p{i}" for i in positions), *(f"count({_column(i)}) OVER nth AS c{i}" for i in positions)]
    )
    taken = f"r.c{{0}} + r.p{{0}} <= {BASELINE_SAMPLES_PER_DEVICE}"
    sums = "u.n, u.total, u.total_sq, now()"
    add = "n = t.n + EXCLUDED.n, total = t.total + EXCLUDED.total, total_sq = t.total_sq + EXCLUDED.total_sq, updated_at = EXCLUDED.updated_at"
    # Column-wise: each sample is one row with a column per indicator, summed in one pass per key, and turned into
    # one row per indicator only once summed (a few rows, not one per sample and indicator).
    return f"""
WITH k AS (
    -- The batches folded: (device, receipt time) pairs, each once.
    SELECT DISTINCT device_id, received_at FROM unnest(%(devices)s::bigint[], %(received)s::timestamptz[])
        AS k(device_id, received_at)
), s AS (
    SELECT s.id, s.device_id, d.hardware_model_id, s.release_version, s.cohort, {values}
    FROM k JOIN {samples} s ON s.device_id = k.device_id AND s.received_at = k.received_at
    JOIN {devices} d ON d.id = s.device_id
    WHERE s.release_version <> ''
), first_of_deployment AS (
    -- A wave counts one sample per deployment (the agent sends one, when the deployment finishes): a device that
    -- re-sends or floods samples naming its deployment cannot outweigh the rest of its wave.
    SELECT DISTINCT ON (c.deployment_id) c.id
    FROM k JOIN {samples} c ON c.device_id = k.device_id AND c.received_at = k.received_at
    WHERE c.cohort <> ''
      AND NOT EXISTS (SELECT 1 FROM {samples} e WHERE e.deployment_id = c.deployment_id AND e.id < c.id)
    ORDER BY c.deployment_id, c.id
), prior AS (
    -- Each device's sums per release as they were before this statement (every CTE sees the same snapshot).
    SELECT device_id, release_version, {priors} FROM {per_device}
    WHERE device_id IN (SELECT device_id FROM k) GROUP BY device_id, release_version
), capped AS (
    -- A release's baseline takes at most BASELINE_SAMPLES_PER_DEVICE samples of each device and indicator (its first
    -- ones): a unit that reboots all day, or floods, cannot move the baseline its whole model is judged against.
    -- c<i> numbers the values of indicator i of one device in the order stored (over all the batches folded, so
    -- folding batches together counts as folding them one by one). Only samples with a value of an indicator still
    -- under the cap are numbered: for such an indicator that is every sample of the device with its value, so the
    -- numbering is the same as over all of them; a unit at the cap on every indicator (the usual case for a unit
    -- that sends big batches) numbers nothing.
    SELECT release_version, hardware_model_id, {_sums_sql("r", taken)} FROM (
        SELECT release_version, hardware_model_id, {numbered} FROM (
            SELECT s.id, s.device_id, s.hardware_model_id, s.release_version, {with_priors}
            FROM s LEFT JOIN prior p ON p.device_id = s.device_id AND p.release_version = s.release_version
        ) w
        WHERE {under_cap}
        WINDOW nth AS (
            PARTITION BY device_id, release_version ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW
        )
    ) r
    GROUP BY release_version, hardware_model_id
), per_device AS (
    INSERT INTO {per_device} AS t (device_id, release_version, indicator, n, total, total_sq, updated_at)
    SELECT g.device_id, g.release_version, u.indicator, {sums}
    FROM (SELECT device_id, release_version, {_sums_sql("s")} FROM s GROUP BY device_id, release_version) g
    {_unpivot_sums_sql("g")}
    WHERE u.n > 0 ORDER BY g.device_id, g.release_version, u.indicator
    ON CONFLICT (device_id, release_version, indicator) DO UPDATE SET {add}
    RETURNING 1
), per_release AS (
    INSERT INTO {per_release} AS t (release_version, hardware_model_id, indicator, n, total, total_sq, updated_at)
    SELECT g.release_version, g.hardware_model_id, u.indicator, {sums}
    FROM capped g {_unpivot_sums_sql("g")}
    WHERE u.n > 0 ORDER BY g.release_version, g.hardware_model_id, u.indicator
    ON CONFLICT (release_version, hardware_model_id, indicator) DO UPDATE SET {add}
    RETURNING 1
)
INSERT INTO {per_cohort} AS t (cohort, hardware_model_id, indicator, n, total, total_sq, updated_at)
SELECT g.cohort, g.hardware_model_id, u.indicator, {sums}
FROM (
    SELECT cohort, hardware_model_id, {_sums_sql("s")} FROM s
    WHERE cohort <> '' AND id IN (SELECT id FROM first_of_deployment) GROUP BY cohort, hardware_model_id
) g {_unpivot_sums_sql("g")}
WHERE u.n > 0 ORDER BY g.cohort, g.hardware_model_id, u.indicator
ON CONFLICT (cohort, hardware_model_id, indicator) DO UPDATE SET {add}
"""


_FOLD_SQL: str | None = None


def telemetry_aggregates_fold(batches: Sequence[tuple[int, datetime]]) -> None:
    """Add the samples of processed batches, each (device id, receipt time), to every aggregate, in one statement
    inside the caller's transaction (the one that stored the samples); prepared once per connection. Folding
    several batches at once adds the same sums as folding them one by one in the order their samples were stored."""
    global _FOLD_SQL
    if _FOLD_SQL is None:
        _FOLD_SQL = _fold_sql()
    devices = [device_id for device_id, _ in batches]
    received = [received_at for _, received_at in batches]
    with prepared_cursor() as cursor:
        cursor.execute(_FOLD_SQL, {"devices": devices, "received": received})


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
