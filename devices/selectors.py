"""Reads of the fleet inventory: lists with filters, lookups by natural key, drift and version distribution."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Avg, Count, Max, Q, QuerySet, Sum
from django.http import Http404
from django.utils import timezone

from devices.choices import DeviceStatus
from devices.models import DRIFT_Q, Device, HardwareModel, Region, Tag, TelemetrySample
from devices.validators import SEMVER_RE

# Global defaults of the device load budget (a region's own values win where set).
DEFAULT_POLL_SECONDS = 300
DEFAULT_BUDGET_WINDOW_SECONDS = 60
DEFAULT_OFFLINE_AFTER_POLLS = 3


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


@dataclass(frozen=True)
class LoadShaping:
    """The effective device load budget of a region: its own values where set, else the global defaults."""

    poll_interval_seconds: int
    max_checkins_per_window: int  # 0: no limit
    max_concurrent_downloads: int  # 0: no limit
    window_seconds: int


def _setting_int(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def region_load_shaping(*, region: Region) -> LoadShaping:
    """The budget that applies to devices of this region (no query: the region is already loaded)."""

    def pick(own: int | None, setting: str, default: int) -> int:
        return own if own is not None else _setting_int(setting, default)

    return LoadShaping(
        poll_interval_seconds=pick(region.poll_interval_seconds, "OTA_DEVICE_POLL_SECONDS", DEFAULT_POLL_SECONDS),
        max_checkins_per_window=pick(region.max_checkins_per_window, "OTA_DEVICE_MAX_CHECKINS_PER_WINDOW", 0),
        max_concurrent_downloads=pick(region.max_concurrent_downloads, "OTA_DEVICE_MAX_CONCURRENT_DOWNLOADS", 0),
        window_seconds=max(1, _setting_int("OTA_DEVICE_BUDGET_WINDOW_SECONDS", DEFAULT_BUDGET_WINDOW_SECONDS)),
    )


def _offline_after(poll_interval_seconds: int) -> timedelta:
    polls = max(1, _setting_int("OTA_DEVICE_OFFLINE_AFTER_POLLS", DEFAULT_OFFLINE_AFTER_POLLS))
    return timedelta(seconds=poll_interval_seconds * polls)


def device_offline_q(*, now: datetime | None = None) -> Q:
    """Devices that never checked in, or not within OTA_DEVICE_OFFLINE_AFTER_POLLS poll intervals of their region.

    One condition per region (regions are few).
    """
    now = now or timezone.now()
    stale = Q(pk__in=[])
    for region in Region.objects.only("pk", "poll_interval_seconds"):
        cutoff = now - _offline_after(region_load_shaping(region=region).poll_interval_seconds)
        stale |= Q(region_id=region.pk, last_seen_at__lt=cutoff)
    return Q(last_seen_at__isnull=True) | stale


def device_is_offline(*, device: Device, now: datetime | None = None) -> bool:
    """True when the device never checked in or missed OTA_DEVICE_OFFLINE_AFTER_POLLS poll intervals."""
    if device.last_seen_at is None:
        return True
    interval = region_load_shaping(region=device.region).poll_interval_seconds
    return device.last_seen_at < (now or timezone.now()) - _offline_after(interval)


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
    offline: bool | None = None,
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
    if offline is True:
        devices = devices.filter(device_offline_q())
    elif offline is False:
        devices = devices.exclude(device_offline_q())
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


def _telemetry_kpis(samples: QuerySet[TelemetrySample]) -> dict[str, Any]:
    figures = samples.aggregate(
        samples=Count("id"),
        last_reported_at=Max("reported_at"),
        mean_install_duration_s=Avg("install_duration_s"),
        mean_boot_time_s=Avg("boot_time_s"),
        unexpected_reboots=Sum("unexpected_reboots"),
        mean_gps_fix_s=Avg("gps_fix_s"),
        sensor_uncalibrated=Count("id", filter=Q(sensor_calibrated=False)),
        sensor_reports=Count("id", filter=Q(sensor_calibrated__isnull=False)),
        mean_link_kbps=Avg("link_kbps"),
    )
    for key in ("mean_install_duration_s", "mean_boot_time_s", "mean_gps_fix_s", "mean_link_kbps"):
        if figures[key] is not None:
            figures[key] = round(float(figures[key]), 1)
    figures["unexpected_reboots"] = figures["unexpected_reboots"] or 0
    return figures


def device_telemetry_summary(*, device: Device, since: datetime | None = None) -> dict[str, Any]:
    """A device's KPI figures over its stored samples (optionally since a time): counts, means, reboots."""
    samples = TelemetrySample.objects.filter(device=device)
    if since is not None:
        samples = samples.filter(reported_at__gte=since)
    return _telemetry_kpis(samples)


def telemetry_deployment_kpis(*, deployment_ids: Iterable[int]) -> dict[str, Any]:
    """KPI figures over the samples devices sent about these deployments (e.g. one wave's): for gates and KPIs."""
    return _telemetry_kpis(TelemetrySample.objects.filter(deployment_id__in=list(deployment_ids)))
