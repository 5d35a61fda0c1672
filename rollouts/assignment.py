"""Bulk creation of deployments, held by the database's rule that a device has at most one active deployment.

Waves and the rollback saga insert their rows here. The partial unique index `one_active_deployment_per_device`
decides which device is free: a row for a device that already holds an active deployment (in this or another
rollout) is not inserted but recorded as skipped with the reason, so no device is held twice and none is lost
without a trace. No check-then-act: the insert itself is the check (ON CONFLICT DO NOTHING).
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple

from django.db import connection
from django.utils import timezone

from devices.models import Device
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment

UNKNOWN_SOFTWARE: tuple[str, int | None] = ("", None)
BUSY_REASON = "skipped: the device already holds an active deployment (another rollout, or an update in flight)"


class NewDeployment(NamedTuple):
    """One deployment to create; `status` is pending, or skipped with the reason in `detail`."""

    rollout_id: int
    wave_id: int
    device_id: int
    release_id: int
    kind: str
    not_before: datetime
    deadline_at: datetime | None
    status: str = DeploymentStatus.PENDING
    detail: str = ""


COPY_COLUMNS = (
    "rollout_id",
    "wave_id",
    "device_id",
    "release_id",
    "kind",
    "not_before",
    "deadline_at",
    "status",
    "detail",
    "attempts",
    "last_seq",
    "failure_class",
    "created_at",
    "updated_at",
    "finished_at",
    "from_version",
    "from_release_counter",
)


def _installed_software(device_ids: list[int]) -> dict[int, tuple[str, int | None]]:
    """What each device runs now per the inventory: device id -> (installed version, release counter).

    One query (an array parameter, however large the wave); never one per device.
    """
    if not device_ids:
        return {}
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id, installed_version, installed_release_counter FROM {Device._meta.db_table} WHERE id = ANY(%s)",
            [device_ids],
        )
        return {pk: (version, counter) for pk, version, counter in cursor.fetchall()}


def _row_values(row: NewDeployment, installed: dict[int, tuple[str, int | None]], now: datetime) -> tuple:
    version, counter = installed.get(row.device_id, UNKNOWN_SOFTWARE)
    finished = now if row.status != DeploymentStatus.PENDING else None
    return (*row[:7], row.status, row.detail[:500], 0, -1, "", now, now, finished, version, counter)


def insert_deployments(rows: list[NewDeployment]) -> set[int]:
    """Insert new deployments in bulk; devices that already hold an active deployment get a skipped row instead.

    COPY into a temporary table and one INSERT .. ON CONFLICT DO NOTHING (100,000 rows in seconds). Each row also stores what its device runs at this moment
    (`from_version`, `from_release_counter`), read in the same transaction. Returns the ids of the devices that
    were busy. Callers hold the wave or rollout row lock and pass only devices without a row of this kind yet.
    """
    if not rows:
        return set()
    now = timezone.now()
    installed = _installed_software([row.device_id for row in rows])
    values = [_row_values(row, installed, now) for row in rows]
    inserted = _insert_ignoring_conflicts(values)
    busy = {row.device_id for row in rows if row.device_id not in inserted}
    if busy:
        skipped = [
            row._replace(status=DeploymentStatus.SKIPPED, detail=BUSY_REASON) for row in rows if row.device_id in busy
        ]
        _insert_ignoring_conflicts([_row_values(row, installed, now) for row in skipped])
    return busy


def _insert_ignoring_conflicts(values: list[tuple]) -> set[int]:
    """Insert rows (COPY_COLUMNS order); the device ids whose row went in (the rest hit a unique constraint)."""
    table = Deployment._meta.db_table
    columns = ", ".join(COPY_COLUMNS)
    with connection.cursor() as cursor:
        cursor.execute(
            f"CREATE TEMPORARY TABLE IF NOT EXISTS new_deployments ON COMMIT DELETE ROWS AS "
            f"SELECT {columns} FROM {table} WITH NO DATA"
        )
        cursor.execute("TRUNCATE new_deployments")
        with cursor.cursor.copy(f"COPY new_deployments ({columns}) FROM STDIN") as copy:
            for row in values:
                copy.write_row(row)
        # A device missing from the inventory: the deferred foreign key refuses the row at commit.
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM new_deployments "
            "ON CONFLICT DO NOTHING RETURNING device_id"
        )
        inserted = {device_id for (device_id,) in cursor.fetchall()}
        cursor.execute("TRUNCATE new_deployments")
        return inserted
