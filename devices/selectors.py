"""Reads of the fleet inventory: lists with filters, lookups by natural key, drift and version distribution."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Q, QuerySet
from django.http import Http404

from devices.choices import DeviceStatus
from devices.models import DRIFT_Q, Device, HardwareModel, Region, Tag
from devices.validators import SEMVER_RE


def hardware_model_list() -> QuerySet[HardwareModel]:
    """All hardware models, by name."""
    return HardwareModel.objects.order_by("name")


def hardware_model_get(*, name: str) -> HardwareModel:
    """The hardware model with this name (its hardware id); Http404 if there is none."""
    hardware_model = HardwareModel.objects.filter(name=name).first()
    if hardware_model is None:
        raise Http404("No such hardware model.")
    return hardware_model


def region_list() -> QuerySet[Region]:
    """All regions, by code."""
    return Region.objects.order_by("code")


def region_get(*, code: str) -> Region:
    """The region with this code; Http404 if there is none."""
    region = Region.objects.filter(code=code).first()
    if region is None:
        raise Http404("No such region.")
    return region


def _devices() -> QuerySet[Device]:
    return Device.objects.select_related("hardware_model", "region").prefetch_related("tags")


def device_list(
    *,
    base: QuerySet[Device] | None = None,
    hardware_model: str | None = None,
    region: str | None = None,
    vehicle_type: str | None = None,
    usage_profile: str | None = None,
    tag: str | None = None,
    status: str | None = None,
    installed_version: str | None = None,
    drift: bool | None = None,
    search: str | None = None,
) -> QuerySet[Device]:
    """Devices matching every given filter (None means "any"), ordered by serial; `base` narrows the start."""
    devices = base if base is not None else _devices()
    if hardware_model:
        devices = devices.filter(hardware_model__name=hardware_model)
    if region:
        devices = devices.filter(region__code=region)
    if vehicle_type:
        devices = devices.filter(vehicle_type=vehicle_type)
    if usage_profile:
        devices = devices.filter(usage_profile=usage_profile)
    if tag:
        # A subquery rather than a join, so a device never appears twice.
        devices = devices.filter(pk__in=Device.tags.through.objects.filter(tag__name=tag).values("device_id"))
    if status:
        devices = devices.filter(status=status)
    if installed_version:
        devices = devices.filter(installed_version=installed_version)
    if drift is True:
        devices = devices.filter(DRIFT_Q)
    elif drift is False:
        devices = devices.exclude(DRIFT_Q)
    if search:
        devices = devices.filter(Q(serial__icontains=search) | Q(vin__icontains=search))
    return devices.order_by("serial")


def device_get(*, serial_or_id: str | int) -> Device:
    """The device with this serial (a str) or primary key (an int); Http404 if there is none.

    The type decides, never the content: a serial made of digits must not resolve to another device's id.
    """
    devices = _devices()
    if isinstance(serial_or_id, int) and not isinstance(serial_or_id, bool):
        device = devices.filter(pk=serial_or_id).first() if 0 < serial_or_id < 2**63 else None
    else:
        device = devices.filter(serial=str(serial_or_id)).first()
    if device is None:
        raise Http404("No such device.")
    return device


def device_drift_list() -> QuerySet[Device]:
    """Devices whose last report differs from what the inventory expects (version or release counter)."""
    return _devices().filter(DRIFT_Q).order_by("serial")


def tag_list() -> QuerySet[Tag]:
    """All tags, by name."""
    return Tag.objects.order_by("name")


def _version_key(version: str) -> tuple[Any, ...]:
    # Semantic-version order (1.10.0 after 1.9.0; a pre-release before its release); unparsable values last.
    match = SEMVER_RE.match(version)
    if not match:
        return (1, version)
    major, minor, patch, pre = int(match[1]), int(match[2]), int(match[3]), match[4]
    pre_key: tuple[Any, ...] = (1,)
    if pre:
        pre_key = (0, *((0, int(part), "") if part.isdigit() else (1, 0, part) for part in pre.split(".")))
    return (0, major, minor, patch, pre_key)


def fleet_version_distribution(*, include_decommissioned: bool = False) -> list[dict[str, Any]]:
    """Per hardware model, how many devices the inventory expects on each installed version (oldest first)."""
    devices = Device.objects.all()
    if not include_decommissioned:
        devices = devices.exclude(status=DeviceStatus.DECOMMISSIONED)
    rows = devices.order_by().values("hardware_model__name", "installed_version").annotate(devices=Count("id"))
    by_model: dict[str, dict[str, int]] = {}
    for row in rows:
        by_model.setdefault(row["hardware_model__name"], {})[row["installed_version"]] = row["devices"]
    return [
        {
            "hardware_model": name,
            "devices": sum(versions.values()),
            "versions": [
                {"version": version, "devices": versions[version]} for version in sorted(versions, key=_version_key)
            ],
        }
        for name, versions in sorted(by_model.items())
    ]
