"""Every write to the fleet inventory, one atomic service per decision, each recorded in the decision record."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, TypedDict, TypeVar

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, transaction
from django.db.models import (
    Case,
    CharField,
    DateTimeField,
    F,
    Field,
    IntegerField,
    JSONField,
    Model,
    Q,
    Value,
    When,
)
from django.db.models.functions import Coalesce, Greatest
from django.utils import timezone

from approvals.audit.alert_decisions import alert_resolve_live
from approvals.audit.records import record_decision
from devices.choices import DEVICE_TRANSITIONS, DeviceStatus, SigningScheme, UpdateChannel, UsageProfile
from devices.inputs import (
    DeviceChangesInput,
    DeviceInput,
    DeviceReportInput,
    HardwareModelChangesInput,
    HardwareModelInput,
    RegionChangesInput,
    RegionInput,
    parse,
)
from devices.models import Device, HardwareModel, Region, Tag
from devices.validators import validate_reason
from ota_project.alerts.choices import AlertKind
from ota_project.errors import Conflict, InvalidInput

Actor = User | None
ModelT = TypeVar("ModelT", bound=Model)

# Status a device moves to -> the verb recorded for the move.
STATUS_ACTIONS: dict[str, str] = {
    DeviceStatus.ACTIVE: "release",
    DeviceStatus.QUARANTINED: "quarantine",
    DeviceStatus.REVOKED: "revoke",
    DeviceStatus.DECOMMISSIONED: "decommission",
}
# Taking a device out of service for cause needs a reason someone can audit later.
REASON_REQUIRED = frozenset({DeviceStatus.QUARANTINED, DeviceStatus.REVOKED})


class HardwareModelChanges(TypedDict, total=False):
    """Fields of a hardware model that may change after creation (the name is its hardware id and never does)."""

    family: str
    revision: str
    update_channel: str
    signing_scheme: str
    validation_checks: list[str]
    partition_layout: dict[str, Any]


class RegionChanges(TypedDict, total=False):
    """Fields of a region that may change after creation: its device load budget (code and time zone never do)."""

    name: str
    poll_interval_seconds: int | None
    max_checkins_per_window: int | None
    max_concurrent_downloads: int | None


class DeviceChanges(TypedDict, total=False):
    """Inventory fields of a device that may change (serial never does; status only through device_set_status)."""

    vin: str | None
    hardware_model: HardwareModel
    region: Region
    vehicle_type: str
    usage_profile: str
    tags: list[str]
    network_capabilities: list[str]
    installed_version: str
    installed_release_counter: int
    certificate_fingerprint: str | None


# ---------------------------------------------------------------------------------------------------------------
# Input: parsed with the boundary's own shapes (devices.inputs), so a direct call is refused like an API call
# ---------------------------------------------------------------------------------------------------------------


def _raise_if(errors: dict[str, list[str]], message: str) -> None:
    if errors:
        raise InvalidInput(message, fields=errors)


def reason_clean(reason: str | None) -> str:
    """The reason stripped; InvalidInput (fields.reason) when it is too long or not storable text."""
    reason = (reason or "").strip()
    try:
        validate_reason(reason)
    except ValidationError as exc:
        message = "The reason is too long." if exc.code == "max_length" else "The reason is not valid text."
        raise InvalidInput(message, fields={"reason": list(exc.messages)}) from None
    return reason


def _none_if_blank(values: dict[str, Any]) -> dict[str, Any]:
    # Empty strings mean "none" for the optional unique identifiers (NULLs do not collide in a unique index).
    for key in ("vin", "certificate_fingerprint"):
        if values.get(key) == "":
            values[key] = None
    return values


# ---------------------------------------------------------------------------------------------------------------
# The uniqueness of device identifiers (one query, used by the device services and the importer)
# ---------------------------------------------------------------------------------------------------------------

UNIQUE_IDENTIFIERS = ("serial", "vin", "certificate_fingerprint")
_HOLDER_CHUNK = 5000


def identifier_holders(column: str, values: Iterable[str | None]) -> dict[str, str]:
    """{value: serial of the device holding it} for the values of a unique identifier already in the inventory."""
    if column not in UNIQUE_IDENTIFIERS:
        raise ValueError(f"{column} is not a unique device identifier")
    wanted = sorted({value for value in values if value})
    found: dict[str, str] = {}
    for start in range(0, len(wanted), _HOLDER_CHUNK):
        chunk = wanted[start : start + _HOLDER_CHUNK]
        found.update(Device.objects.filter(**{f"{column}__in": chunk}).values_list(column, "serial"))
    return found


def _device_uniqueness_errors(values: Mapping[str, Any], *, own_serial: str | None) -> dict[str, list[str]]:
    """Field errors for the identifiers in `values` that another device (not `own_serial`) already holds."""
    messages = {
        "serial": "A device with this serial already exists.",
        "vin": "Another device already has this VIN.",
        "certificate_fingerprint": "Another device already has this certificate fingerprint.",
    }
    errors: dict[str, list[str]] = {}
    for column, message in messages.items():
        holder = identifier_holders(column, [values.get(column)]).get(values.get(column) or "")
        if holder is not None and holder != own_serial:
            errors[column] = [message]
    return errors


def tags_get_or_create(names: Iterable[str]) -> list[Tag]:
    """The Tag rows for these names, creating the missing ones (tags are free labels, created on first use)."""
    wanted = sorted(set(names))
    if not wanted:
        return []
    Tag.objects.bulk_create([Tag(name=name) for name in wanted], ignore_conflicts=True)
    return list(Tag.objects.filter(name__in=wanted))


def device_snapshot(device: Device, tags: Iterable[str] | None = None) -> dict[str, Any]:
    """The inventory fields of a device as plain JSON (what decision records store as before/after)."""
    tag_names = sorted(tags) if tags is not None else sorted(device.tags.values_list("name", flat=True))
    return {
        "serial": device.serial,
        "vin": device.vin,
        "hardware_model": device.hardware_model.name,
        "region": device.region.code,
        "vehicle_type": device.vehicle_type,
        "usage_profile": device.usage_profile,
        "tags": tag_names,
        "network_capabilities": list(device.network_capabilities),
        "installed_version": device.installed_version,
        "installed_release_counter": device.installed_release_counter,
        "certificate_fingerprint": device.certificate_fingerprint,
        "status": device.status,
    }


def _hardware_model_snapshot(hardware_model: HardwareModel) -> dict[str, Any]:
    return {
        "name": hardware_model.name,
        "family": hardware_model.family,
        "revision": hardware_model.revision,
        "update_channel": hardware_model.update_channel,
        "signing_scheme": hardware_model.signing_scheme,
        "validation_checks": list(hardware_model.validation_checks),
        "partition_layout": dict(hardware_model.partition_layout),
    }


def _changed(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = [key for key in after if before.get(key) != after[key]]
    return {key: before.get(key) for key in keys}, {key: after[key] for key in keys}


# ---------------------------------------------------------------------------------------------------------------
# Hardware models and regions
# ---------------------------------------------------------------------------------------------------------------


@transaction.atomic
def hardware_model_create(
    *,
    actor: Actor,
    name: str,
    family: str,
    revision: str,
    partition_layout: dict[str, Any],
    update_channel: str = UpdateChannel.STABLE,
    signing_scheme: str = SigningScheme.ECDSA_P256,
    validation_checks: list[str] | None = None,
) -> HardwareModel:
    """Add a hardware model; its name is the hardware id that releases and metadata refer to, so it is unique."""
    values: dict[str, Any] = {
        "name": name,
        "family": family,
        "revision": revision,
        "update_channel": update_channel,
        "signing_scheme": signing_scheme,
        "validation_checks": list(validation_checks or []),
        "partition_layout": partition_layout,
    }
    values = parse(HardwareModelInput, values, message="The hardware model is invalid.")
    if HardwareModel.objects.filter(name=values["name"]).exists():
        _raise_if({"name": ["A hardware model with this name already exists."]}, "The hardware model is invalid.")
    hardware_model = HardwareModel(**values)
    _insert_unique(hardware_model, field="name", message="A hardware model with this name already exists.")
    record_decision(
        actor=actor,
        action="devices.hardware_model.create",
        object_type="hardware_model",
        object_id=hardware_model.name,
        after=_hardware_model_snapshot(hardware_model),
    )
    return hardware_model


@transaction.atomic
def hardware_model_update(
    *, actor: Actor, hardware_model: HardwareModel, changes: HardwareModelChanges, reason: str = ""
) -> HardwareModel:
    """Change a hardware model's description, channel, signing scheme, checks or layout; the name is immutable."""
    reason = reason_clean(reason)
    values = parse(HardwareModelChangesInput, changes, message="The hardware model change is invalid.")
    _update_recorded(
        actor=actor,
        instance=hardware_model,
        values=values,
        snapshot=_hardware_model_snapshot,
        action="devices.hardware_model.update",
        object_type="hardware_model",
        object_id=hardware_model.name,  # immutable
        reason=reason,
    )
    return hardware_model


REGION_CODE_TAKEN = "A region with this code already exists."


def _insert_unique(instance: Model, *, field: str, message: str) -> None:
    """Insert the row; a concurrent insert of the same key (after the check that saw none) is reported as input."""
    try:
        with transaction.atomic():
            instance.save(force_insert=True)
    except IntegrityError:
        raise InvalidInput(message, fields={field: [message]}) from None


def _update_recorded(
    *,
    actor: Actor,
    instance: ModelT,
    values: Mapping[str, Any],
    snapshot: Callable[[ModelT], dict[str, Any]],
    action: str,
    object_type: str,
    object_id: str,
    reason: str,
) -> None:
    """Apply validated `values` to the locked row, save it and record only what changed (before and after).

    The row is locked so "before" is what this change replaces, even if the caller's instance was already modified;
    the caller's instance is brought up to date afterwards.
    """
    current = type(instance)._default_manager.select_for_update().get(pk=instance.pk)
    before = snapshot(current)
    for key, value in values.items():
        setattr(current, key, value)
    before, after = _changed(before, snapshot(current))
    if after:
        current.save(update_fields=list(after))
        record_decision(
            actor=actor,
            action=action,
            object_type=object_type,
            object_id=object_id,
            before=before,
            after=after,
            reason=reason,
        )
    for key in snapshot(current):
        setattr(instance, key, getattr(current, key))


@transaction.atomic
def region_create(
    *,
    actor: Actor,
    code: str,
    name: str,
    time_zone: str,
    poll_interval_seconds: int | None = None,
    max_checkins_per_window: int | None = None,
    max_concurrent_downloads: int | None = None,
) -> Region:
    """Add a region; its time zone must be an IANA zone because maintenance windows are local to it.

    Its device load budget is optional: what is not given follows the global defaults.
    """
    values: dict[str, Any] = {"code": code, "name": name, "time_zone": time_zone}
    budget = {
        "poll_interval_seconds": poll_interval_seconds,
        "max_checkins_per_window": max_checkins_per_window,
        "max_concurrent_downloads": max_concurrent_downloads,
    }
    values.update({key: value for key, value in budget.items() if value is not None})
    values = parse(RegionInput, values, message="The region is invalid.")
    if Region.objects.filter(code=values["code"]).exists():
        _raise_if({"code": [REGION_CODE_TAKEN]}, "The region is invalid.")
    region = Region(**values)
    _insert_unique(region, field="code", message=REGION_CODE_TAKEN)
    record_decision(
        actor=actor, action="devices.region.create", object_type="region", object_id=region.code, after=values
    )
    return region


def _region_snapshot(region: Region) -> dict[str, Any]:
    return {
        "name": region.name,
        "poll_interval_seconds": region.poll_interval_seconds,
        "max_checkins_per_window": region.max_checkins_per_window,
        "max_concurrent_downloads": region.max_concurrent_downloads,
    }


@transaction.atomic
def region_update(*, actor: Actor, region: Region, changes: RegionChanges, reason: str = "") -> Region:
    """Change a region's name or device load budget (poll interval, check-ins per window, concurrent downloads).

    The code and time zone never change (maintenance windows already computed depend on them); every change is
    recorded with its before and after values.
    """
    reason = reason_clean(reason)
    values = parse(RegionChangesInput, changes, message="The region change is invalid.")
    _update_recorded(
        actor=actor,
        instance=region,
        values=values,
        snapshot=_region_snapshot,
        action="devices.region.update",
        object_type="region",
        object_id=region.code,
        reason=reason,
    )
    return region


# ---------------------------------------------------------------------------------------------------------------
# Devices: inventory
# ---------------------------------------------------------------------------------------------------------------


def _save_device(device: Device, **save_kwargs: Any) -> None:
    # A concurrent insert can still collide on a unique column after the checks above; report it as input.
    try:
        with transaction.atomic():
            device.save(**save_kwargs)
    except IntegrityError:
        errors = _device_uniqueness_errors(
            {key: getattr(device, key) for key in UNIQUE_IDENTIFIERS}, own_serial=device.serial if device.pk else None
        )
        raise InvalidInput(
            "Another device already uses one of these identifiers.",
            fields=errors or {"serial": ["Another device already uses one of these identifiers."]},
        ) from None


@transaction.atomic
def device_create(
    *,
    actor: Actor,
    serial: str,
    hardware_model: HardwareModel,
    region: Region,
    vehicle_type: str,
    installed_version: str,
    installed_release_counter: int = 0,
    usage_profile: str = UsageProfile.MIXED,
    vin: str | None = None,
    tags: list[str] | None = None,
    network_capabilities: list[str] | None = None,
    certificate_fingerprint: str | None = None,
) -> Device:
    """Add a device to the inventory (active); serial, VIN and certificate fingerprint are unique fleet-wide."""
    values = parse(
        DeviceInput,
        {
            "serial": serial,
            "vin": vin,
            "hardware_model": hardware_model,
            "region": region,
            "vehicle_type": vehicle_type,
            "usage_profile": usage_profile,
            "tags": list(tags or []),
            "network_capabilities": list(network_capabilities or []),
            "installed_version": installed_version,
            "installed_release_counter": installed_release_counter,
            "certificate_fingerprint": certificate_fingerprint,
        },
        message="The device is invalid.",
    )
    _none_if_blank(values)
    _raise_if(_device_uniqueness_errors(values, own_serial=None), "The device is invalid.")
    tag_names = values.pop("tags")
    device = Device(**values, status=DeviceStatus.ACTIVE)
    _save_device(device, force_insert=True)
    device.tags.set(tags_get_or_create(tag_names))
    record_decision(
        actor=actor,
        action="devices.device.create",
        object_type="device",
        object_id=device.serial,
        after=device_snapshot(device, tag_names),
    )
    return device


@transaction.atomic
def device_update(*, actor: Actor, device: Device, changes: DeviceChanges, reason: str = "") -> Device:
    """Correct a device's inventory fields (not its serial, not its status); records what changed."""
    reason = reason_clean(reason)
    for key in ("serial", "status", "status_reason"):
        if key in changes:
            raise InvalidInput(
                f"{key} cannot be changed here.",
                fields={key: ["Use the status actions." if key.startswith("status") else "The serial never changes."]},
            )
    values = _none_if_blank(parse(DeviceChangesInput, changes, message="The device change is invalid.", partial=True))
    current = Device.objects.select_for_update().select_related("hardware_model", "region").get(pk=device.pk)
    _raise_if(_device_uniqueness_errors(values, own_serial=current.serial), "The device change is invalid.")
    before_full = device_snapshot(current)
    tag_names = values.pop("tags", None)
    for key, value in values.items():
        setattr(current, key, value)
    after_full = device_snapshot(current, tag_names if tag_names is not None else before_full["tags"])
    before, after = _changed(before_full, after_full)
    if after:
        _save_device(current, update_fields=[*(key for key in values if key in after), "updated_at"])
        if tag_names is not None and "tags" in after:
            current.tags.set(tags_get_or_create(tag_names))
        record_decision(
            actor=actor,
            action="devices.device.update",
            object_type="device",
            object_id=current.serial,
            before=before,
            after=after,
            reason=reason,
        )
    return current


# ---------------------------------------------------------------------------------------------------------------
# Devices: status (one guarded transition helper)
# ---------------------------------------------------------------------------------------------------------------


@transaction.atomic
def device_set_status(
    *, actor: Actor, device: Device, status: str, reason: str = "", system_actor: str = "system"
) -> Device:
    """Move a device along DEVICE_TRANSITIONS with a conditional UPDATE and a decision record.

    A no-op when the device already has that status (callers such as activities retry); refuses moves the
    table does not allow, and quarantine or revocation without a reason.
    """
    if status not in DeviceStatus.values:
        raise InvalidInput(f'"{status}" is not a device status.', fields={"status": ["Unknown status."]})
    reason = reason_clean(reason)
    verb = STATUS_ACTIONS[status]
    if status in REASON_REQUIRED and not reason:
        raise InvalidInput(f"A reason is required to {verb} a device.", fields={"reason": ["This field is required."]})
    current = Device.objects.filter(pk=device.pk).values_list("status", flat=True).first()
    if current is None:
        raise Conflict("The device no longer exists.", code="not_found")
    if current == status:
        device.refresh_from_db(fields=["status", "status_reason", "updated_at"])
        return device
    if status not in DEVICE_TRANSITIONS[current]:
        raise Conflict(
            f"A {current} device cannot be moved to {status}.",
            code="invalid_transition",
            fields={"status": [f"Allowed from {current}: {', '.join(sorted(DEVICE_TRANSITIONS[current])) or 'none'}."]},
        )
    now = timezone.now()
    # The status in the WHERE clause makes the move atomic against a concurrent one: exactly one of them wins.
    # Back in service: its failure count starts again (a person looked at it).
    reset = {"install_failures": 0} if status == DeviceStatus.ACTIVE else {}
    moved = Device.objects.filter(pk=device.pk, status=current).update(
        status=status, status_reason=reason, updated_at=now, **reset
    )
    if moved != 1:
        raise Conflict("The device's status changed while this request ran; reload and try again.", code="stale")
    record_decision(
        actor=actor,
        action=f"devices.device.{verb}",
        object_type="device",
        object_id=device.serial,
        before={"status": current},
        after={"status": status},
        reason=reason,
        system_actor=system_actor,
    )
    device.status, device.status_reason, device.updated_at = status, reason, now
    return device


def device_quarantine(*, actor: Actor, device: Device, reason: str, system_actor: str = "system") -> Device:
    """Take a device out of rollouts while it is investigated (reason required)."""
    return device_set_status(
        actor=actor, device=device, status=DeviceStatus.QUARANTINED, reason=reason, system_actor=system_actor
    )


def device_install_failure_count(*, device_id: int) -> int:
    """Count one more failed install of the device and return its count since the last success or release.

    Must run in the caller's transaction: the UPDATE takes the device's row lock until commit, so concurrent failure
    reports of one device are counted one after another and exactly one of them reaches a quarantine threshold."""
    Device.objects.filter(pk=device_id).update(install_failures=F("install_failures") + 1)
    return int(Device.objects.filter(pk=device_id).values_list("install_failures", flat=True).get())


def device_quarantine_alert_key(serial: str) -> str:
    """The dedup key of a device's `device.quarantined` alert (raised by rollouts.quarantine, resolved on release)."""
    return f"{AlertKind.DEVICE_QUARANTINED}:{serial}"


@transaction.atomic
def device_release_from_quarantine(*, actor: Actor, device: Device, reason: str = "") -> Device:
    """Return a quarantined device to active service. A person's release is also the resolution of the device's live
    `device.quarantined` alert, with that person as resolver, in the same transaction (one decision, not two)."""
    # The device's row lock from here to the commit: of two people releasing at once, exactly one finds it quarantined.
    was = Device.objects.select_for_update().filter(pk=device.pk).values_list("status", flat=True).first()
    device = device_set_status(actor=actor, device=device, status=DeviceStatus.ACTIVE, reason=reason)
    if actor is not None and was == DeviceStatus.QUARANTINED:
        note = f"Released from quarantine: {reason}" if reason else "Released from quarantine."
        alert_resolve_live(actor=actor, dedup_key=device_quarantine_alert_key(device.serial), note=note)
    return device


def device_revoke(*, actor: Actor, device: Device, reason: str) -> Device:
    """Revoke a device's trust for good, e.g. a compromised credential (reason required; only decommission follows)."""
    return device_set_status(actor=actor, device=device, status=DeviceStatus.REVOKED, reason=reason)


def device_decommission(*, actor: Actor, device: Device, reason: str = "") -> Device:
    """Retire a device permanently (terminal)."""
    return device_set_status(actor=actor, device=device, status=DeviceStatus.DECOMMISSIONED, reason=reason)


# ---------------------------------------------------------------------------------------------------------------
# Devices: what they report
# ---------------------------------------------------------------------------------------------------------------


def device_report_check(
    *,
    version: str,
    release_counter: int,
    at: datetime,
    active_slot: str | None = None,
    boot_count: int | None = None,
    health: dict[str, bool] | None = None,
) -> dict[str, Any]:
    """The report as it will be stored, checked (InvalidInput, nothing written, when it does not fit)."""
    if timezone.is_naive(at):
        _raise_if({"at": ["Must be timezone-aware."]}, "The device report is invalid.")
    report = parse(
        DeviceReportInput,
        {
            "version": version,
            "release_counter": release_counter,
            "active_slot": active_slot,
            "boot_count": boot_count,
            "health": health,
        },
        message="The device report is invalid.",
    )
    report["at"] = at
    return report


def device_report_changes(**report: Any) -> dict[str, Any]:
    """The column updates that store one check-in report: THE rule of what a report changes, as one UPDATE's SET.

    Takes device_report_check's arguments (and checks them). An older report never overwrites a newer one
    (out-of-order safe: each reported_* column keeps its value unless this report is at least as recent as the
    stored one); last_seen_at only moves forward. Every expression reads the row as it was before the UPDATE, so
    they compose in one statement (the device API's one-statement check-in compiles them into its statement).
    """
    checked = device_report_check(**report)
    at = checked["at"]
    reported: dict[str, tuple[Any, Field[Any, Any]]] = {
        "reported_version": (checked["version"], CharField()),
        "reported_release_counter": (checked["release_counter"], IntegerField()),
        "reported_at": (at, DateTimeField()),
    }
    if checked["active_slot"] is not None:
        reported["reported_active_slot"] = (checked["active_slot"], CharField())
    if checked["boot_count"] is not None:
        reported["reported_boot_count"] = (checked["boot_count"], IntegerField())
    if checked["health"] is not None:
        reported["reported_health"] = (dict(checked["health"]), JSONField())
    newer = Q(reported_at__isnull=True) | Q(reported_at__lte=at)
    changes: dict[str, Any] = {
        column: Case(When(newer, then=Value(value, output_field=kind)), default=F(column), output_field=kind)
        for column, (value, kind) in reported.items()
    }
    changes["last_seen_at"] = Greatest(Coalesce("last_seen_at", Value(at)), Value(at))
    return changes


# The same rule as device_report_changes, for many devices at once: each reported_* column takes the report's value
# only when the report is at least as recent as the stored one (a value the report does not carry is kept),
# reported_at likewise, last_seen_at only moves forward. Kept next to its one-device form; tests compare the two.
# The rows are locked in id order first: two web processes writing overlapping devices never deadlock.
_REPORTS_SQL = """
WITH locked AS MATERIALIZED (SELECT id FROM {table} WHERE id = ANY(%s::bigint[]) ORDER BY id FOR NO KEY UPDATE)
UPDATE {table} AS d SET
    reported_version = CASE WHEN {newer} THEN u.version ELSE d.reported_version END,
    reported_release_counter = CASE WHEN {newer} THEN u.release_counter ELSE d.reported_release_counter END,
    reported_active_slot = CASE WHEN {newer} AND u.active_slot IS NOT NULL THEN u.active_slot
                                ELSE d.reported_active_slot END,
    reported_boot_count = CASE WHEN {newer} AND u.boot_count IS NOT NULL THEN u.boot_count
                               ELSE d.reported_boot_count END,
    reported_health = CASE WHEN {newer} AND u.health IS NOT NULL THEN u.health::jsonb ELSE d.reported_health END,
    reported_at = CASE WHEN {newer} THEN u.at ELSE d.reported_at END,
    last_seen_at = GREATEST(COALESCE(d.last_seen_at, u.at), u.at)
FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::bigint[], %s::text[], %s::bigint[], %s::text[])
    AS u(id, at, version, release_counter, active_slot, boot_count, health)
WHERE d.id = u.id AND d.id IN (SELECT id FROM locked)
"""


def device_reports_record(reports: Mapping[int, tuple[datetime, Mapping[str, Any]]]) -> None:
    """Store reports of many devices (device id -> (at, report as device_record_report takes it)) in one statement.

    For reports already checked (devices.edge.quiet writes back the reports of check-ins it answered from memory)."""
    if not reports:
        return
    ids, ats, columns = list(reports), [at for at, _ in reports.values()], [r for _, r in reports.values()]
    health = [json.dumps(r["health"], sort_keys=True) if r.get("health") is not None else None for r in columns]
    params: list[Any] = [
        sorted(ids),
        ids,
        ats,
        [r["version"] for r in columns],
        [r["release_counter"] for r in columns],
        [r.get("active_slot") for r in columns],
        [r.get("boot_count") for r in columns],
        health,
    ]
    table = connection.ops.quote_name(Device._meta.db_table)
    sql = _REPORTS_SQL.format(table=table, newer="(d.reported_at IS NULL OR d.reported_at <= u.at)")
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


@transaction.atomic
def device_record_report(
    *,
    device: Device,
    version: str,
    release_counter: int,
    at: datetime,
    active_slot: str | None = None,
    boot_count: int | None = None,
    health: dict[str, bool] | None = None,
) -> Device:
    """Store what a device reports at check-in (version of its active slot, boot count, health summary) and when.

    An older report never overwrites a newer one (out-of-order safe); last_seen_at only moves forward
    (`device_report_changes` holds the rule).
    """
    changes = device_report_changes(
        version=version,
        release_counter=release_counter,
        at=at,
        active_slot=active_slot,
        boot_count=boot_count,
        health=health,
    )
    Device.objects.filter(pk=device.pk).update(**changes)
    device.refresh_from_db(
        fields=[
            "reported_version",
            "reported_release_counter",
            "reported_at",
            "reported_active_slot",
            "reported_boot_count",
            "reported_health",
            "last_seen_at",
        ]
    )
    return device
