"""Scrape and audit cost against fleet size (not a test): `make bench-audits` or
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench_audits python -m bench.audits`.

For a fleet of 1,000 and then 100,000 devices (1 % not seen for a month, 1 % reporting an unknown version, the
rest in order): the /metrics collector (FleetCollector, every gauge) and each recurring audit, best of three, with
the number of SQL statements each runs. The baseline, measured in the same run on the same table: one bare
`SELECT count(*)` of the devices (a full scan). The point: the statement count stays the same whatever the fleet
size (aggregates, not a query per row) and the time grows like a few scans of the table, not like per-row work.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")


def _setup() -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    # Every size deletes the devices: never on anything but a scratch database.
    if not str(connection.settings_dict["NAME"]).startswith("ota_bench"):
        raise SystemExit(f"bench.audits runs on a scratch database ota_bench*, not {connection.settings_dict['NAME']}")
    call_command("migrate", verbosity=0)


def _fleet(devices: int) -> None:
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from approvals.audit.models import AuditFinding
    from devices.firmware.models import FirmwareArtifact, FirmwareRelease
    from devices.models import Device, HardwareModel, Region

    AuditFinding.objects.all().delete()
    Device.objects.all().delete()
    model, _ = HardwareModel.objects.get_or_create(
        name="bench-audits", defaults={"family": "bench", "revision": "r1", "partition_layout": {}}
    )
    region, _ = Region.objects.get_or_create(code="bench", defaults={"name": "Bench", "time_zone": "UTC"})
    release = FirmwareRelease.objects.filter(version="1.0.0").first()
    if release is None:
        sha256 = hashlib.sha256(b"bench-audits-1.0.0").hexdigest()
        artifact, _ = FirmwareArtifact.objects.get_or_create(
            sha256=sha256, defaults={"size_bytes": 1024, "storage_path": f"{sha256[:2]}/{sha256}"}
        )
        author, _ = get_user_model().objects.get_or_create(username="bench-audits")
        release = FirmwareRelease.objects.create(
            version="1.0.0", release_counter=1, artifact=artifact, artifact_name="tcu-1.0.0.bin",
            source_revision="0" * 40, builder="bench", created_by=author,
        )  # fmt: skip
    release.hardware_models.add(model)
    now = timezone.now()
    batch = []
    for i in range(devices):
        stale = i % 100 == 0
        rogue = i % 100 == 1
        batch.append(
            Device(
                serial=f"BA{i:07d}", hardware_model=model, region=region, vehicle_type="heavy_truck",
                installed_version="1.0.0", installed_release_counter=1,
                reported_version="6.6.6" if rogue else "1.0.0", reported_release_counter=1, reported_at=now,
                last_seen_at=now - timedelta(days=30 if stale else 0, hours=1),
            )
        )  # fmt: skip
        if len(batch) == 10_000:
            Device.objects.bulk_create(batch)
            batch = []
    Device.objects.bulk_create(batch)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE devices_device")


def _best(work: Callable[[], Any], rounds: int = 3) -> tuple[float, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    best = float("inf")
    statements = 0
    for _ in range(rounds):
        with CaptureQueriesContext(connection) as queries:
            started = time.perf_counter()
            work()
            best = min(best, time.perf_counter() - started)
        statements = len(queries)
    return best, statements


def _scan() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM devices_device")
        cursor.fetchone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="1000,100000")
    args = parser.parse_args()
    _setup()
    from rollouts.audits import AUDITS, audit_run
    from rollouts.metrics import fleet_metrics

    results: dict[str, Any] = {"benchmark": "audits_and_metrics", "sizes": {}}
    for size in (int(value) for value in args.sizes.split(",")):
        _fleet(size)
        scan, _ = _best(_scan)
        row: dict[str, Any] = {"baseline_full_scan_ms": round(scan * 1000, 2)}
        scrape, statements = _best(fleet_metrics)
        row["scrape"] = {"ms": round(scrape * 1000, 1), "statements": statements, "scans": round(scrape / scan, 1)}
        for kind in AUDITS:
            elapsed, statements = _best(functools.partial(audit_run, kind=kind))
            row[kind] = {"ms": round(elapsed * 1000, 1), "statements": statements, "scans": round(elapsed / scan, 1)}
        results["sizes"][str(size)] = row
        print(json.dumps({str(size): row}), flush=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
