"""Target scopes: a filter over the fleet (hardware models, regions, vehicle types, tags) or an explicit device list.

A scope is JSON stored on a change request, read as a `TargetScope`:
    {"hardware_models": ["tcu-4g-r2"], "regions": ["eu-west"], "vehicle_types": ["bus"], "tags": ["pilot"]}
    {"devices": ["TCU00000001", "TCU00000002"]}
Filter keys combine with AND; values inside one key combine with OR. Only active devices are targeted.
`scope_parse` is the one check (shape and names); the type lives here, beside the queries over it, because the
inventory may import no other app.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, QuerySet

from devices.choices import DEVICE_TARGETABLE, VehicleType
from devices.models import Device, HardwareModel, Region, Tag
from ota_project.errors import InvalidInput

FILTER_KEYS = ("hardware_models", "regions", "vehicle_types", "tags")
SCOPE_KEYS = (*FILTER_KEYS, "devices")
MAX_EXPLICIT_DEVICES = 100_000


@dataclass(frozen=True, slots=True)
class TargetScope:
    """Which devices a change targets: filters (AND across kinds, OR within one) or an explicit serial list.

    Each tuple is sorted and de-duplicated; empty means "not filtered on this".
    """

    hardware_models: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    vehicle_types: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()

    @classmethod
    def stored(cls, data: Mapping[str, list[str]]) -> TargetScope:
        """A scope as stored on a change (checked by `scope_parse` when it was saved; names are not re-checked)."""
        return cls(**{key: tuple(data.get(key, ())) for key in SCOPE_KEYS})

    @property
    def is_empty(self) -> bool:
        return not any(getattr(self, key) for key in SCOPE_KEYS)

    def to_json(self) -> dict[str, list[str]]:
        """The JSON stored on the change: only the keys in use."""
        return {key: list(values) for key in SCOPE_KEYS if (values := getattr(self, key))}


def scope_parse(data: object) -> TargetScope:
    """Check a scope's shape and names (the one check, for API, forms and services). Raises InvalidInput."""
    return TargetScope.stored(scope_normalize(data))


def scope_normalize(scope: Any) -> dict[str, list[str]]:
    """Check a scope's shape and names; return it with sorted, de-duplicated lists. Raises InvalidInput."""
    if isinstance(scope, TargetScope):
        scope = scope.to_json()  # built in code: the same checks apply
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


def scope_devices(scope: TargetScope | Mapping[str, list[str]], *, include_inactive: bool = False) -> QuerySet[Device]:
    """The devices a (checked or stored) scope hits; only targetable (active) devices unless asked otherwise."""
    if not isinstance(scope, TargetScope):
        scope = TargetScope.stored(scope)
    devices = Device.objects.all()
    if scope.devices:
        devices = devices.filter(serial__in=scope.devices)
    if scope.hardware_models:
        devices = devices.filter(hardware_model__name__in=scope.hardware_models)
    if scope.regions:
        devices = devices.filter(region__code__in=scope.regions)
    if scope.vehicle_types:
        devices = devices.filter(vehicle_type__in=scope.vehicle_types)
    if scope.tags:
        devices = devices.filter(
            pk__in=Device.tags.through.objects.filter(tag__name__in=scope.tags).values("device_id")
        )
    if not include_inactive:
        devices = devices.filter(status__in=DEVICE_TARGETABLE)
    return devices


def _counts(devices: QuerySet[Device], field: str) -> dict[str, int]:
    rows = devices.order_by().values(field).annotate(n=Count("id"))
    return {str(row[field]): row["n"] for row in sorted(rows, key=lambda r: str(r[field]))}


def scope_summary(scope: TargetScope | Mapping[str, list[str]]) -> dict[str, Any]:
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
