"""The one-statement check-in: authentication, the report write and the pending-work check in one SQL statement.

Every part is compiled from the query that holds its rule, not written again here: who may talk to the device API
is `identity.accepted_certificate_devices` (or, in the development mode, `identity.accepted_devices`), what a report changes is `devices.services.device_report_changes`, and "work
waiting" is a deployment the offer service would look at (`deployment_offer` considers pending and offered ones
only). The statement never offers anything: when work waits, the view takes the locking offer path.

The write is skipped (and the caller falls back to the full path) when the device's region has a check-in budget:
a device over its budget must be refused before anything is recorded, and admission needs the region.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import connection
from django.db.models import F, Q, QuerySet, Value
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.db.models.sql import UpdateQuery

from devices.credentials import secret_hash
from devices.edge.identity import PresentedIdentity, accepted_certificate_devices, accepted_devices
from devices.edge.quiet import IDENTITY, OFFER, WORK, Epochs, QuietDevice
from devices.edge.services import IN_FLIGHT
from devices.models import CheckinEpoch, Device
from devices.services import device_report_changes, device_report_check
from devices.validators import SLOT_NAMES
from ota_project.compiled_queries import prepared_cursor
from rollouts.choices import DeploymentStatus
from rollouts.deployment_services import OFFER_CANDIDATES
from rollouts.models import Deployment

# In flight (the device polls faster) but no offer candidate: an offered deployment takes the offer path.
_UNDER_WAY = tuple(status for status in IN_FLIGHT if status not in OFFER_CANDIDATES)
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
    one_candidate: bool  # exactly one pending or offered deployment (an offer re-sent may be remembered)
    under_way: bool  # a deployment between download and confirmation
    fetching: bool  # a deployment whose image the device is downloading: the answer repeats its offer (fresh URL)
    epochs: Epochs  # the check-in epochs as of the statement's snapshot (devices.edge.quiet)

    @property
    def quiet(self) -> bool:
        """Recorded, and nothing waiting or under way: an answer devices.edge.quiet may give again from memory."""
        return self.recorded and not self.work_waiting and not self.under_way

    def quiet_device(self) -> QuietDevice:
        return QuietDevice(
            self.device_id, self.region_id, self.region_poll_interval_seconds, self.region_max_checkins_per_window
        )


# Stand-ins the statement is compiled with once per shape of report; each marks where one request value goes.
_STAND_INS: dict[str, Any] = {
    "serial": "stand-in-serial-5f0c",
    "secret": "stand-in-secret-5f0c",
    "fingerprint": "5f0c" * 16,
    "default_budget": 1_357_913,
    "version": "9753.8642.1-stand.in",
    "release_counter": 1_234_567_891,
    "at": datetime(1901, 2, 3, 4, 5, 6, 789_012, tzinfo=UTC),
    "active_slot": SLOT_NAMES[-1],
    "boot_count": 1_987_654_321,
    "health": {"stand-in-5f0c": True},
}


@dataclass(frozen=True)
class _Statement:
    """The check-in statement compiled by Django, with where each request value goes among its parameters."""

    sql: str
    slots: tuple[tuple[str | None, Any], ...]  # (name of the request value, or None for a constant; compiled param)

    def params(self, values: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(param if name is None else _rewrapped(param, values[name]) for name, param in self.slots)


def _plain(param: Any) -> Any:
    value = getattr(param, "obj", param)  # psycopg's Jsonb keeps the value in .obj
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _rewrapped(param: Any, value: Any) -> Any:
    # The same adapter class as Django chose (Int4, Jsonb with its dumps), so PostgreSQL sees the same types.
    if hasattr(param, "obj") and hasattr(param, "dumps"):
        return type(param)(value, param.dumps)
    if isinstance(param, int) and type(param) is not int:
        return type(param)(value)
    return value


def _sql(queryset: QuerySet[Any]) -> tuple[str, list[Any]]:
    text, params = queryset.query.sql_with_params()
    return text, list(params)


def _compile(present: frozenset[str], by_certificate: bool) -> _Statement:
    """Compile the statement from the rules' own querysets, with stand-ins where request values go."""
    stand_in = _STAND_INS
    report = {name: stand_in[name] if name in present else None for name in ("active_slot", "boot_count", "health")}
    changes = device_report_changes(
        version=stand_in["version"], release_counter=stand_in["release_counter"], at=stand_in["at"], **report
    )
    accepted = (
        accepted_certificate_devices(stand_in["fingerprint"])
        if by_certificate
        else accepted_devices(stand_in["serial"], stand_in["secret"])
    )
    caller, caller_params = _sql(
        accepted.values(
            device_id=F("pk"),
            region_ref=F("region_id"),
            poll=F("region__poll_interval_seconds"),
            own_budget=F("region__max_checkins_per_window"),
            # The region's own budget, else the global default (devices.selectors.region_load_shaping's rule).
            budget=Coalesce(F("region__max_checkins_per_window"), Value(stand_in["default_budget"])),
        )
    )
    update = UpdateQuery(Device)
    update.add_q(Q(pk__in=RawSQL('SELECT "device_id" FROM "caller" WHERE "budget" = 0', ())))
    update.add_update_values(changes)  # Django's own UPDATE compiler: exactly the SET device_record_report runs
    written, written_params = update.get_compiler(connection=connection).as_sql()
    waiting, waiting_params = _exists(OFFER_CANDIDATES)
    candidates, candidates_params = _sql(
        Deployment.objects.filter(device_id__in=_CALLER, status__in=OFFER_CANDIDATES).order_by().values("pk")[:2]
    )
    under_way, under_way_params = _exists(_UNDER_WAY)
    fetching, fetching_params = _exists((DeploymentStatus.DOWNLOADING,))
    work, work_params = _epoch(WORK)
    identity, identity_params = _epoch(IDENTITY)
    offer, offer_params = _epoch(OFFER)
    sql = (
        f"WITH caller AS ({caller}), written AS ({written} RETURNING 1) "
        'SELECT caller."device_id", caller."region_ref", caller."poll", caller."own_budget", '
        f"EXISTS (SELECT 1 FROM written), {waiting}, (SELECT count(*) FROM ({candidates}) AS candidates) = 1, "
        f"{under_way}, {fetching}, {work}, {identity}, {offer} FROM caller"
    )
    markers = {name: value for name, value in stand_in.items() if name in present or name not in report}
    if by_certificate:
        del markers["serial"], markers["secret"]
    else:
        del markers["fingerprint"]
        markers["secret"] = secret_hash(stand_in["secret"])
    slots = []
    every = (*caller_params, *written_params, *waiting_params, *candidates_params, *under_way_params, *fetching_params)
    for param in (*every, *work_params, *identity_params, *offer_params):
        value = _plain(param)
        name = next((n for n, m in markers.items() if type(m) is type(value) and m == value), None)
        slots.append((name, param))
    missing = set(markers) - {name for name, _ in slots}
    if missing:
        raise RuntimeError(f"the check-in statement lost its parameters {sorted(missing)}")
    return _Statement(sql, tuple(slots))


@functools.cache
def _statement(present: frozenset[str], by_certificate: bool) -> _Statement:
    return _compile(present, by_certificate)


def _exists(statuses: tuple[str, ...]) -> tuple[str, list[Any]]:
    text, params = _sql(Deployment.objects.filter(device_id__in=_CALLER, status__in=statuses).order_by().values("pk"))
    return f"EXISTS ({text})", params


def _epoch(name: str) -> tuple[str, list[Any]]:
    text, params = _sql(CheckinEpoch.objects.filter(name=name).values("value"))
    return f"COALESCE(({text}), 0)", params


def checkin_record(*, presented: PresentedIdentity, report: dict[str, Any], at: datetime) -> CheckinRow | None:
    """Authenticate, store the report (unless the region has a check-in budget) and look for work: one statement.

    None when the credential is not accepted (nothing written; the caller takes the full path, which answers the
    one 401 and records the security event). InvalidInput for a report that does not fit (nothing run). The
    statement is compiled once per shape of report (which optional values it has) and identity kind, and reused.
    """
    checked = device_report_check(at=at, **report)
    present = frozenset(name for name in ("active_slot", "boot_count", "health") if checked[name] is not None)
    values = {
        **checked,
        "serial": presented.serial,
        "secret": secret_hash(presented.secret),
        "fingerprint": presented.fingerprint,
        "default_budget": int(getattr(settings, "OTA_DEVICE_MAX_CHECKINS_PER_WINDOW", 0)),
        "health": dict(checked["health"]) if checked["health"] is not None else None,
    }
    statement = _statement(present, presented.by_certificate)
    with prepared_cursor() as cursor:
        cursor.execute(statement.sql, statement.params(values))
        row = cursor.fetchone()
    if row is None:
        return None
    device_id, region_id, poll, budget, recorded, waiting, one_candidate, under_way, fetching, *epochs = row
    return CheckinRow(
        device_id=device_id,
        region_id=region_id,
        region_poll_interval_seconds=poll,
        region_max_checkins_per_window=budget,
        recorded=recorded,
        work_waiting=waiting,
        one_candidate=one_candidate,
        under_way=under_way,
        fetching=fetching,
        epochs=Epochs(*(int(epoch) for epoch in epochs)),
    )
