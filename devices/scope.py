"""Target scopes: a filter over the fleet (hardware models, regions, vehicle types, tags) or an explicit device list.

A scope is plain JSON stored on a change request:
    {"hardware_models": ["tcu-4g-r2"], "regions": ["eu-west"], "vehicle_types": ["bus"], "tags": ["pilot"]}
    {"devices": ["TCU00000001", "TCU00000002"]}
Filter keys combine with AND; values inside one key combine with OR. Only active devices are targeted.
"""

from __future__ import annotations

from typing import Any

from django.db.models import Count, QuerySet

from devices.choices import DEVICE_TARGETABLE, VehicleType
from devices.models import Device, HardwareModel, Region, Tag
from ota_project.errors import InvalidInput

FILTER_KEYS = ("hardware_models", "regions", "vehicle_types", "tags")
SCOPE_KEYS = (*FILTER_KEYS, "devices")
MAX_EXPLICIT_DEVICES = 100_000


def scope_normalize(scope: Any) -> dict[str, list[str]]:
    """Check a scope's shape and names; return it with sorted, de-duplicated lists. Raises InvalidInput."""
    if not isinstance(scope, dict):
        raise InvalidInput("The target scope must be an object.", fields={"target_scope": ["Must be an object."]})
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(scope) - set(SCOPE_KEYS))
    for key in unknown:
        errors[key] = ["Unknown scope key; use one of " + ", ".join(SCOPE_KEYS) + "."]
    normalized: dict[str, list[str]] = {}
    for key in SCOPE_KEYS:
        if key not in scope:
            continue
        value = scope[key]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            errors[key] = ["Must be a list of non-empty strings."]
            continue
        if value:
            normalized[key] = sorted(set(value))
    if "devices" in normalized and any(k in normalized for k in FILTER_KEYS):
        errors["devices"] = ["An explicit device list cannot be combined with filters."]
    if not normalized and not errors:
        errors["target_scope"] = ["The scope is empty: name hardware models, regions, vehicle types, tags or devices."]
    if len(normalized.get("devices", [])) > MAX_EXPLICIT_DEVICES:
        errors["devices"] = [f"At most {MAX_EXPLICIT_DEVICES} devices may be listed."]
    if not errors:
        _check_names(normalized, errors)
    if errors:
        raise InvalidInput("The target scope is invalid.", fields={"target_scope": errors})
    return normalized


def _missing(wanted: list[str], found: set[str]) -> list[str]:
    return [name for name in wanted if name not in found]


def _check_names(scope: dict[str, list[str]], errors: dict[str, list[str]]) -> None:
    lookups: dict[str, tuple[Any, str]] = {
        "hardware_models": (HardwareModel.objects, "name"),
        "regions": (Region.objects, "code"),
        "tags": (Tag.objects, "name"),
        "devices": (Device.objects, "serial"),
    }
    for key, (manager, field) in lookups.items():
        if key in scope:
            found = set(manager.filter(**{f"{field}__in": scope[key]}).values_list(field, flat=True))
            missing = _missing(scope[key], found)
            if missing:
                errors[key] = [f"Unknown: {', '.join(missing[:20])}" + (" ..." if len(missing) > 20 else "")]
    if "vehicle_types" in scope:
        missing = _missing(scope["vehicle_types"], set(VehicleType.values))
        if missing:
            errors["vehicle_types"] = [f"Unknown: {', '.join(missing)}"]


def scope_devices(scope: dict[str, list[str]], *, include_inactive: bool = False) -> QuerySet[Device]:
    """The devices a (normalized) scope hits; only targetable (active) devices unless asked otherwise."""
    devices = Device.objects.all()
    if "devices" in scope:
        devices = devices.filter(serial__in=scope["devices"])
    if "hardware_models" in scope:
        devices = devices.filter(hardware_model__name__in=scope["hardware_models"])
    if "regions" in scope:
        devices = devices.filter(region__code__in=scope["regions"])
    if "vehicle_types" in scope:
        devices = devices.filter(vehicle_type__in=scope["vehicle_types"])
    if "tags" in scope:
        devices = devices.filter(
            pk__in=Device.tags.through.objects.filter(tag__name__in=scope["tags"]).values("device_id")
        )
    if not include_inactive:
        devices = devices.filter(status__in=DEVICE_TARGETABLE)
    return devices


def _counts(devices: QuerySet[Device], field: str) -> dict[str, int]:
    rows = devices.order_by().values(field).annotate(n=Count("id"))
    return {str(row[field]): row["n"] for row in sorted(rows, key=lambda r: str(r[field]))}


def scope_summary(scope: dict[str, list[str]]) -> dict[str, Any]:
    """How many devices a scope hits, broken down by hardware model, region and installed version."""
    devices = scope_devices(scope)
    active_fleet = Device.objects.filter(status__in=DEVICE_TARGETABLE).count()
    total = devices.count()
    return {
        "devices": total,
        "fleet_share_percent": round(100.0 * total / active_fleet, 2) if active_fleet else 0.0,
        "by_hardware_model": _counts(devices, "hardware_model__name"),
        "by_region": _counts(devices, "region__code"),
        "by_version": _counts(devices, "installed_version"),
        "excluded_not_active": scope_devices(scope, include_inactive=True)
        .exclude(status__in=DEVICE_TARGETABLE)
        .count(),
    }
