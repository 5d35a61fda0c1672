"""Rollout scale benchmark (not a test): run with `make bench` or
`DATABASE_URL=postgres://postgres@127.0.0.1:5432/ota_bench python -m bench.rollout_scale`.

1. Assignment: the time to assign one 100,000-device wave (cohort planning + bulk insert, the real service)
   next to a raw bulk insert of the same rows, measured in the same run; the ratio is what matters.
2. History: Temporal history events and wall time of a 5-wave rollout at 1,000, 10,000 and 100,000 devices
   (device outcomes written in bulk between monitoring ticks), showing that events stay flat as the fleet grows.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")


def _setup() -> None:
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def bench_assignment(devices: int) -> dict[str, Any]:
    """Time wave_assign for a single wave of `devices` against a raw bulk insert of the same rows."""
    from django.conf import settings
    from django.db import transaction
    from django.utils import timezone

    from bench.fleet import build_fleet
    from rollouts import rollout_services as steps
    from rollouts.assignment import NewDeployment, insert_deployments
    from rollouts.choices import RolloutStatus
    from rollouts.models import Deployment, Rollout

    settings.TEMPORAL_ENABLED = False
    tag = f"a{int(time.time())}"
    fleet = build_fleet(devices, tag=tag, single_wave=True)
    rollout = steps.rollout_start(actor=fleet["operator"], change=fleet["change"])
    started = time.perf_counter()
    assigned = steps.wave_assign(rollout_id=rollout.pk, wave_index=0).assigned
    assign_seconds = time.perf_counter() - started

    rows = list(Deployment.objects.filter(rollout=rollout).values_list("device_id", "wave_id", "release_id"))
    Deployment.objects.filter(rollout=rollout).delete()
    now = timezone.now()
    objects = [
        Deployment(
            rollout_id=rollout.pk, wave_id=wave, device_id=device, release_id=release, not_before=now, deadline_at=now
        )
        for device, wave, release in rows
    ]
    started = time.perf_counter()
    with transaction.atomic():
        Deployment.objects.bulk_create(objects, batch_size=5000)
    orm_seconds = time.perf_counter() - started
    Deployment.objects.filter(rollout=rollout).delete()
    copy_rows = [NewDeployment(rollout.pk, wave, device, release, "update", now, now) for device, wave, release in rows]
    started = time.perf_counter()
    with transaction.atomic():
        insert_deployments(copy_rows)
    copy_seconds = time.perf_counter() - started
    Rollout.objects.filter(pk=rollout.pk).update(status=RolloutStatus.ABORTED)
    return {
        "devices": devices,
        "assigned": assigned,
        "assign_seconds (cohort planning + pacing + insert)": round(assign_seconds, 3),
        "raw_orm_bulk_create_seconds (baseline)": round(orm_seconds, 3),
        "raw_copy_insert_seconds": round(copy_seconds, 3),
        "ratio_assign_to_raw_orm_bulk_create": round(assign_seconds / orm_seconds, 2),
        "ratio_assign_to_raw_copy": round(assign_seconds / copy_seconds, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--assign-devices", type=int, default=100_000)
    parser.add_argument("--history-sizes", default="1000,10000,100000")
    parser.add_argument("--skip-history", action="store_true")
    args = parser.parse_args(argv)
    _setup()
    report: dict[str, Any] = {"assignment": bench_assignment(args.assign_devices)}
    if not args.skip_history:
        from bench.history import bench_history

        report["history"] = [bench_history(int(n)) for n in args.history_sizes.split(",")]
    print(json.dumps(report, indent=2))
    sys.stdout.flush()
    os._exit(0)  # temporalio clients can crash at interpreter exit (sdk-python#300)


if __name__ == "__main__":
    main()
