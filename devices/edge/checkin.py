"""The one-statement check-in: authentication, the report write and the pending-work check in one SQL statement.

Every part is compiled from the query that holds its rule, not written again here: who may talk to the device API
is `identity.accepted_devices`, what a report changes is `devices.services.device_report_changes`, and "work
waiting" is a deployment the offer service would look at (`deployment_offer` considers pending and offered ones
only). The statement never offers anything: when work waits, the view takes the locking offer path.

The write is skipped (and the caller falls back to the full path) when the device's region has a check-in budget:
a device over its budget must be refused before anything is recorded, and admission needs the region.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, Q, QuerySet, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.db.models.sql import UpdateQuery

from devices.edge.identity import accepted_devices
from devices.models import Device
from devices.services import device_report_changes
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment

# What deployment_offer looks at: with none of these, it offers nothing and changes nothing.
OFFER_CANDIDATES = (DeploymentStatus.PENDING, DeploymentStatus.OFFERED)
# Between offer and confirmation: the device polls faster (devices.edge.services.IN_FLIGHT, offered excepted:
# an offered deployment is a candidate and takes the offer path).
_UNDER_WAY = (
    DeploymentStatus.DOWNLOADING,
    DeploymentStatus.DOWNLOADED,
    DeploymentStatus.INSTALLING,
    DeploymentStatus.REBOOTING,
    DeploymentStatus.CONFIRMING,
)
_CALLER = RawSQL('SELECT "device_id" FROM "caller"', ())


@dataclass(frozen=True)
class CheckinRow:
    """What the statement found about an authenticated device, and whether it stored the report."""

    device_id: int
    region_id: int
    region_poll_interval_seconds: int | None
    region_max_checkins_per_window: int | None
    recorded: bool  # False: the region has a check-in budget; nothing was written
    work_waiting: bool  # a pending or offered deployment: only deployment_offer may answer
    under_way: bool  # a deployment between download and confirmation


def _sql(queryset: QuerySet[Any]) -> tuple[str, tuple[Any, ...]]:
    text, params = queryset.query.sql_with_params()
    return text, tuple(params)


def _update_sql(changes: dict[str, Any]) -> tuple[str, tuple[Any, ...]]:
    # Django's own UPDATE compiler, so the SET clause is exactly what device_record_report runs.
    update = UpdateQuery(Device)
    update.add_q(Q(pk__in=RawSQL('SELECT "device_id" FROM "caller" WHERE "budget" = 0', ())))
    update.add_update_values(changes)
    text, params = update.get_compiler(connection=connection).as_sql()
    return text, tuple(params)


def _exists(statuses: tuple[str, ...]) -> tuple[str, tuple[Any, ...]]:
    text, params = _sql(Deployment.objects.filter(device_id__in=_CALLER, status__in=statuses).order_by().values("pk"))
    return f"EXISTS ({text})", params


def checkin_record(*, serial: str, secret: str, report: dict[str, Any], at: datetime) -> CheckinRow | None:
    """Authenticate, store the report (unless the region has a check-in budget) and look for work: one statement.

    None when the credential is not accepted (nothing written; the caller takes the full path, which answers the
    one 401 and records the security event). InvalidInput for a report that does not fit (nothing run).
    """
    changes = device_report_changes(at=at, **report)
    default_budget = int(getattr(settings, "OTA_DEVICE_MAX_CHECKINS_PER_WINDOW", 0))
    caller, caller_params = _sql(
        accepted_devices(serial, secret).values(
            device_id=F("pk"),
            region_ref=F("region_id"),
            poll=F("region__poll_interval_seconds"),
            own_budget=F("region__max_checkins_per_window"),
            # The region's own budget, else the global default (devices.selectors.region_load_shaping's rule).
            budget=Coalesce(F("region__max_checkins_per_window"), Value(default_budget)),
        )
    )
    update, update_params = _update_sql(changes)
    waiting, waiting_params = _exists(OFFER_CANDIDATES)
    under_way, under_way_params = _exists(_UNDER_WAY)
    statement = (
        f"WITH caller AS ({caller}), written AS ({update} RETURNING 1) "
        'SELECT caller."device_id", caller."region_ref", caller."poll", caller."own_budget", '
        f"EXISTS (SELECT 1 FROM written), {waiting}, {under_way} FROM caller"
    )
    with connection.cursor() as cursor:
        cursor.execute(statement, (*caller_params, *update_params, *waiting_params, *under_way_params))
        row = cursor.fetchone()
    if row is None:
        return None
    return CheckinRow(*row)
