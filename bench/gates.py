"""Health-gate tick benchmark (not a test): run with `make bench-gates` or
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_gates python -m bench.gates`.

One gate tick is rollouts.signal_gates.signal_report, the reading the wave's health step does on every monitoring
tick: every indicator of the catalogue gated, the wave's cohort aggregates against the same hardware models on the
previous release, and the statistical tests. Measured, in the same run and on the same database, for a wave of
1,000 devices and one of 100,000 (three hardware models; every device sent two samples on the old release and one
after the update, so the raw telemetry table holds ~300,000 samples): the tick must stay flat (ratio ~1) and under
100 ms. For contrast, the same statistics computed directly from the raw samples (what a tick without aggregates
would have to do) are timed as well.

The aggregates are built here by one grouped INSERT over the samples (the state the per-batch fold leaves; that they
are equal is tests/devices/test_telemetry_aggregates.py).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")

MODELS = ("tcu-bench-a", "tcu-bench-b", "tcu-bench-c")
OLD, NEW = "1.0.0", "1.1.0"


def _setup() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if not str(connection.settings_dict["NAME"]).startswith("ota_bench"):
        raise SystemExit(f"bench.gates runs on a scratch database ota_bench*, not {connection.settings_dict['NAME']}")
    call_command("migrate", verbosity=0)


def _wave(size: int, cohort: str, seed: int) -> None:
    """`size` devices over three hardware models, each with two samples on the old release and one in the cohort."""
    from django.db import connection

    from devices.models import Device, HardwareModel, Region, TelemetrySample
    from devices.telemetry import COPY_COLUMNS

    region, _ = Region.objects.get_or_create(code="bench", defaults={"name": "Bench", "time_zone": "UTC"})
    models = [
        HardwareModel.objects.get_or_create(name=name, defaults={"family": "tcu", "revision": "r1"})[0].pk
        for name in MODELS
    ]
    devices = Device.objects.bulk_create(
        [
            Device(
                serial=f"{cohort}-{i}",
                hardware_model_id=models[i % len(models)],
                region=region,
                vehicle_type="heavy_truck",
                installed_version=NEW,
            )
            for i in range(size)
        ],
        batch_size=5000,
    )
    rng = random.Random(seed)
    at = datetime(2026, 1, 5, tzinfo=UTC).isoformat()
    text = io.StringIO()
    for device in devices:
        for release, label, gps in ((OLD, "", 30), (OLD, "", 30), (NEW, cohort, 31)):
            row = (
                device.pk,
                at,
                "\\N",
                at,
                rng.randint(200, 400),
                rng.randint(15, 30),
                int(rng.random() < 0.02),
                max(1, round(rng.gauss(gps, 6))),
                "f" if rng.random() < 0.02 else "t",
                rng.randint(1000, 3000),
                release,
                label,
            )
            text.write("\t".join(str(value) for value in row) + "\n")
    with (
        connection.cursor() as cursor,
        cursor.cursor.copy(f"COPY {TelemetrySample._meta.db_table} ({', '.join(COPY_COLUMNS)}) FROM STDIN") as copy,
    ):
        copy.write(text.getvalue())


def _aggregate() -> None:
    """The aggregates the per-batch fold maintains, built at once from every sample (bench set-up only)."""
    from django.db import connection

    from devices.models import CohortTelemetryAggregate, ReleaseTelemetryAggregate, TelemetrySample
    from devices.telemetry_aggregates import _unpivot_sql

    samples = TelemetrySample._meta.db_table
    source = f"""
        SELECT s.release_version, s.cohort, d.hardware_model_id, v.indicator, v.value
        FROM {samples} s JOIN devices_device d ON d.id = s.device_id {_unpivot_sql()}
        WHERE v.value IS NOT NULL AND s.release_version <> ''"""
    sums = "count(*), sum(value), sum(value * value), now()"
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {ReleaseTelemetryAggregate._meta.db_table}")
        cursor.execute(f"DELETE FROM {CohortTelemetryAggregate._meta.db_table}")
        cursor.execute(
            f"INSERT INTO {ReleaseTelemetryAggregate._meta.db_table} "
            "(release_version, hardware_model_id, indicator, n, total, total_sq, updated_at) "
            f"SELECT release_version, hardware_model_id, indicator, {sums} FROM ({source}) x GROUP BY 1, 2, 3"
        )
        cursor.execute(
            f"INSERT INTO {CohortTelemetryAggregate._meta.db_table} "
            "(cohort, hardware_model_id, indicator, n, total, total_sq, updated_at) "
            f"SELECT cohort, hardware_model_id, indicator, {sums} FROM ({source}) x WHERE cohort <> '' GROUP BY 1, 2, 3"
        )
        cursor.execute("ANALYZE")


def _raw_tick(cohort: str) -> None:
    """The same sums read straight from the raw samples (the contrast: what a tick without aggregates costs)."""
    from django.db import connection

    from devices.telemetry_aggregates import _unpivot_sql

    with connection.cursor() as cursor:
        cursor.execute(
            f"""SELECT d.hardware_model_id, v.indicator, count(*), sum(v.value), sum(v.value * v.value)
            FROM devices_telemetrysample s JOIN devices_device d ON d.id = s.device_id {_unpivot_sql()}
            WHERE v.value IS NOT NULL AND (s.cohort = %s OR (s.release_version = %s AND s.cohort = ''))
            GROUP BY 1, 2""",
            [cohort, OLD],
        )
        cursor.fetchall()


def _time(call: Any, rounds: int) -> float:
    """Milliseconds of the fastest of `rounds` calls."""
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return min(times)


def _summary(times: list[float]) -> dict[str, float]:
    return {"median_ms": round(statistics.median(times), 3), "best_ms": round(min(times), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--out", default=f"bench/results/gates-{datetime.now(UTC):%Y-%m-%d}.json")
    args = parser.parse_args()
    _setup()
    from approvals.plans import HealthGate
    from devices.models import TelemetrySample
    from devices.telemetry_aggregates import INDICATORS
    from rollouts.signal_gates import signal_report

    gates = [HealthGate(name, 0.1, 0.05, 20) for name in INDICATORS]
    stamp = int(time.time())
    cohorts = {size: f"wave:bench-{stamp}-{size}" for size in (args.small, args.large)}
    started = time.perf_counter()
    for seed, (size, cohort) in enumerate(cohorts.items()):
        _wave(size, cohort, seed)
    _aggregate()
    setup_seconds = time.perf_counter() - started

    # Interleaved rounds (small, large, small, ...) so the shared machine's load hits both alike.
    ticks: dict[int, list[float]] = {size: [] for size in cohorts}
    for _ in range(args.rounds):
        for size, cohort in cohorts.items():
            ticks[size].append(_time(lambda c=cohort: signal_report(gates, cohort=c, baseline_release=OLD), 1))
    results: dict[str, Any] = {}
    for size, cohort in cohorts.items():
        report = signal_report(gates, cohort=cohort, baseline_release=OLD)
        results[str(size)] = {
            "devices": size,
            "verdict": report.verdict,
            "comparisons": len(report.comparisons),
            "candidate_samples": sum(c.candidate_n for c in report.comparisons if c.indicator == "gps_fix_s"),
            "gate_tick": {
                "median_ms": round(statistics.median(ticks[size]), 3),
                "best_ms": round(min(ticks[size]), 3),
                "p90_ms": round(sorted(ticks[size])[int(len(ticks[size]) * 0.9)], 3),
            },
            "raw_samples_tick (contrast)": _summary([_time(lambda c=cohort: _raw_tick(c), 1) for _ in range(3)]),
        }
    small, large = results[str(args.small)], results[str(args.large)]
    out = {
        "benchmark": "gate tick reading aggregates",
        "samples_in_table": TelemetrySample.objects.count(),
        "setup_seconds": round(setup_seconds, 1),
        "load_average": os.getloadavg(),
        "waves": results,
        "ratio_large_to_small_median (flat ~1)": round(
            large["gate_tick"]["median_ms"] / small["gate_tick"]["median_ms"], 2
        ),
        "large_tick_under_100ms": large["gate_tick"]["median_ms"] < 100,
        "ratio_raw_to_aggregate_large": round(
            large["raw_samples_tick (contrast)"]["median_ms"] / large["gate_tick"]["median_ms"], 1
        ),
    }
    text = json.dumps(out, indent=2)
    print(text)
    Path(args.out).write_text(text + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
