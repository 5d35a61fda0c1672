"""Telemetry intake benchmark (not a test): run with `make bench-telemetry` or
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_telemetry python -m bench.telemetry`.

End to end: device batches of 500 KPI samples POSTed to /device/v1/telemetry/ through the whole Django stack
(middleware, device authentication, parsing, batch validation, the accept service, the enqueue to Redis) by
`--api-processes` client processes (Django's in-process test client, no socket), folded into TelemetrySample rows
by a real `celery worker` (prefork, `--worker-concurrency` processes) on Redis; the clock stops when the last
batch is processed. The baseline, measured in the same run on the same database: a raw psycopg COPY of exactly the
same rows into the same table (one COPY of all rows, and one COPY plus commit per 500-row batch). Rounds are
interleaved (baseline, then the API) and the best of each is compared; the load average is reported because this
machine is shared.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")
# The app path without TLS in front: devices use the development mode's secret credential (bench-mtls measures
# the certificate identity through nginx).
os.environ.setdefault("OTA_DEVICE_AUTH", "secret")
os.environ.setdefault("CELERY_BROKER_URL", "redis://127.0.0.1:6379/0")
os.environ.setdefault("CELERY_TASK_DEFAULT_QUEUE", f"bench-telemetry-{uuid.uuid4().hex[:8]}")
# Persistent database connections for the API clients and the worker (the settings' default is a new one per request).
os.environ.setdefault("CONN_MAX_AGE", "300")

BATCH_SAMPLES = 500
TELEMETRY = "/device/v1/telemetry/"
# Filled in the parent before the client processes fork: (authorization header, body) per batch.
_POSTS: list[tuple[str, bytes]] = []


def _setup() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    # Every round deletes all telemetry: never on anything but a scratch database.
    if not str(connection.settings_dict["NAME"]).startswith("ota_bench"):
        raise SystemExit(
            f"bench.telemetry runs on a scratch database ota_bench*, not {connection.settings_dict['NAME']}"
        )

    call_command("migrate", verbosity=0)


def _fleet(devices: int, tag: str) -> list[tuple[int, str]]:
    """`devices` active devices with a credential each: (device pk, Authorization header)."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from devices.credentials import device_credential_issue
    from devices.models import Device, HardwareModel, Region

    operator, _ = get_user_model().objects.get_or_create(username="bench-telemetry-operator")
    operator.groups.set(Group.objects.filter(name="operator"))
    model, _ = HardwareModel.objects.get_or_create(
        name=f"bench-telemetry-{tag}", defaults={"family": "bench", "revision": "r1", "partition_layout": {}}
    )
    region, _ = Region.objects.get_or_create(code="bench", defaults={"name": "Bench", "time_zone": "UTC"})
    Device.objects.bulk_create(
        Device(
            serial=f"T{tag}-{i:05d}",
            hardware_model=model,
            region=region,
            vehicle_type="heavy_truck",
            installed_version="1.0.0",
            installed_release_counter=1,
        )
        for i in range(devices)
    )
    fleet = []
    for device in Device.objects.filter(hardware_model=model).order_by("pk"):
        secret = device_credential_issue(actor=operator, device=device)
        fleet.append((device.pk, f"Device {device.serial}:{secret}"))
    return fleet


def _samples(batch: int) -> list[dict[str, Any]]:
    """One batch of realistic KPI samples (distinct times, a few KPIs each)."""
    start = datetime(2026, 1, 5, tzinfo=UTC) + timedelta(hours=batch)
    return [
        {
            "reported_at": (start + timedelta(seconds=7 * i)).isoformat().replace("+00:00", "Z"),
            "boot_time_s": 30 + i % 40,
            "unexpected_reboots": i % 3,
            "gps_fix_s": 10 + i % 50,
            "sensor_calibrated": i % 7 != 0,
            "link_kbps": 1000 + 13 * i,
        }
        for i in range(BATCH_SAMPLES)
    ]


def _copy_rows(fleet: list[tuple[int, str]], batches: int) -> list[list[tuple[Any, ...]]]:
    """The rows the API run stores, per batch, in COPY column order (for the raw COPY baseline)."""
    from devices.telemetry import KPI_FIELDS

    received = datetime.now(UTC).isoformat()
    rows = []
    for batch in range(batches):
        device_pk = fleet[batch % len(fleet)][0]
        rows.append(
            [(device_pk, None, s["reported_at"], received, *(s.get(k) for k in KPI_FIELDS)) for s in _samples(batch)]
        )
    return rows


def _clear() -> None:
    from django.db import connection

    from devices.models import TelemetryBatch, TelemetrySample

    TelemetrySample.objects.all().delete()
    TelemetryBatch.objects.all().delete()
    with connection.cursor() as cursor:
        cursor.execute(f"VACUUM ANALYZE {TelemetrySample._meta.db_table}")
        cursor.execute(f"VACUUM ANALYZE {TelemetryBatch._meta.db_table}")


def bench_raw_copy(rows: list[list[tuple[Any, ...]]], *, per_batch: bool) -> float:
    """Seconds to COPY the rows into the samples table: one COPY in one transaction, or one per batch."""
    from django.db import connection, transaction

    from devices.models import TelemetrySample
    from devices.telemetry import KPI_FIELDS

    columns = ", ".join(("device_id", "deployment_id", "reported_at", "received_at", *KPI_FIELDS))
    statement = f"COPY {TelemetrySample._meta.db_table} ({columns}) FROM STDIN"
    started = time.perf_counter()
    groups = rows if per_batch else [[row for batch in rows for row in batch]]
    for group in groups:
        with transaction.atomic(), connection.cursor() as cursor, cursor.cursor.copy(statement) as copy:
            for row in group:
                copy.write_row(row)
    elapsed = time.perf_counter() - started
    assert TelemetrySample.objects.count() == sum(len(batch) for batch in rows)
    return elapsed


def _post_share(share: tuple[int, int]) -> int:
    """In a forked client process: POST every `step`-th prepared batch from `first`; the number answered 202."""
    from django.test import Client

    first, step = share
    client = Client()
    accepted = 0
    for authorization, body in _POSTS[first::step]:
        response = client.post(TELEMETRY, body, content_type="application/json", HTTP_AUTHORIZATION=authorization)
        if response.status_code != 202:
            raise RuntimeError(f"telemetry answered {response.status_code}: {response.content[:300]!r}")
        accepted += 1
    return accepted


def _unprocessed() -> int:
    from devices.models import TelemetryBatch

    return TelemetryBatch.objects.filter(processed_at__isnull=True).count()


def bench_api(processes: int, *, timeout: float = 600.0) -> dict[str, float]:
    """POST every prepared batch from `processes` client processes; seconds until accepted, and until processed."""
    from django.db import connections

    from devices.models import TelemetryBatch, TelemetrySample

    connections.close_all()  # the children open their own
    context = multiprocessing.get_context("fork")
    started = time.perf_counter()
    with context.Pool(processes) as pool:
        accepted = sum(pool.map(_post_share, [(i, processes) for i in range(processes)]))
    api_seconds = time.perf_counter() - started
    deadline = time.monotonic() + timeout
    while _unprocessed() and time.monotonic() < deadline:
        time.sleep(0.02)
    end_to_end_seconds = time.perf_counter() - started
    if _unprocessed():
        raise RuntimeError(f"{_unprocessed()} batches still unprocessed after {timeout} s")
    assert accepted == len(_POSTS) == TelemetryBatch.objects.count()
    assert TelemetrySample.objects.count() == len(_POSTS) * BATCH_SAMPLES
    return {"api_seconds": api_seconds, "end_to_end_seconds": end_to_end_seconds}


def _start_worker(pool: str, concurrency: int, prefetch: int | None, log: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "ota_project", "worker", "--pool", pool]
    command += ["--concurrency", str(concurrency), "--queues", os.environ["CELERY_TASK_DEFAULT_QUEUE"]]
    if prefetch is not None:
        command += ["--prefetch-multiplier", str(prefetch)]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat", "--loglevel", "WARNING"]
    return subprocess.Popen(
        command, env=os.environ.copy(), stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _warm_up(fleet: list[tuple[int, str]]) -> None:
    """A few batches through the worker (it is ready once they are processed), then a clean table."""
    global _POSTS
    _POSTS = [(fleet[i][1], json.dumps({"samples": _samples(-1 - i)}).encode()) for i in range(min(4, len(fleet)))]
    bench_api(1, timeout=120)
    _clear()


def main(argv: list[str] | None = None) -> int:
    global _POSTS
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=int, default=200_000, help="samples per round (batches of 500)")
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--api-processes", type=int, default=2)
    parser.add_argument("--worker-pool", default="prefork", choices=["prefork", "solo", "threads"])
    parser.add_argument(
        "--worker-concurrency", type=int, default=os.cpu_count() or 1, help="celery's default: the CPUs"
    )
    parser.add_argument("--worker-prefetch", type=int, default=None, help="default: the app's (1)")
    args = parser.parse_args(argv)
    _setup()
    import signal

    log = Path(os.environ.get("OTA_DATA_DIR", "/tmp")) / "bench-telemetry-worker.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    worker = _start_worker(args.worker_pool, args.worker_concurrency, args.worker_prefetch, log)
    try:
        _clear()
        tag = uuid.uuid4().hex[:6]
        fleet = _fleet(args.devices, tag)
        batches = max(1, args.records // BATCH_SAMPLES)
        _warm_up(fleet)
        load_before = os.getloadavg()
        prepared = [(fleet[b % len(fleet)][1], json.dumps({"samples": _samples(b)}).encode()) for b in range(batches)]
        rows = _copy_rows(fleet, batches)
        records = batches * BATCH_SAMPLES
        runs: list[dict[str, float]] = []
        for _ in range(args.rounds):
            copy_all = bench_raw_copy(rows, per_batch=False)
            _clear()
            copy_batches = bench_raw_copy(rows, per_batch=True)
            _clear()
            _POSTS = prepared
            api = bench_api(args.api_processes)
            _clear()
            runs.append({"raw_copy_one_statement_seconds": copy_all, "raw_copy_per_batch_seconds": copy_batches, **api})
        best = {key: min(run[key] for run in runs) for key in runs[0]}
        rates = {key.replace("_seconds", "_records_per_s"): records / value for key, value in best.items()}
        report = {
            "records_per_round": records,
            "batch_samples": BATCH_SAMPLES,
            "rounds": args.rounds,
            "api_processes": args.api_processes,
            "worker": f"celery {args.worker_pool}, concurrency {args.worker_concurrency}, prefetch multiplier "
            f"{args.worker_prefetch or 1}, Redis broker",
            "cpus": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "best_records_per_s": {key: round(value) for key, value in rates.items()},
            "ratio_end_to_end_to_raw_copy": round(
                rates["end_to_end_records_per_s"] / rates["raw_copy_one_statement_records_per_s"], 3
            ),
            "ratio_end_to_end_to_raw_copy_per_batch": round(
                rates["end_to_end_records_per_s"] / rates["raw_copy_per_batch_records_per_s"], 3
            ),
            "ratio_api_accept_to_raw_copy": round(
                rates["api_records_per_s"] / rates["raw_copy_one_statement_records_per_s"], 3
            ),
            "runs_seconds": [{key: round(value, 3) for key, value in run.items()} for run in runs],
        }
        print(json.dumps(report, indent=2))
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
