"""Page-level reads for the fleet pages: filter options, counts, chart rows, quarantine list, telemetry summary."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from django.db.models import Count, QuerySet
from django.utils import timezone

from devices import selectors
from devices.choices import DeviceStatus
from devices.models import DRIFT_Q, Device, TelemetrySample

RECENT_TELEMETRY_DAYS = 7
RECENT_TELEMETRY_ROWS = 10
RECENT_DEPLOYMENT_ROWS = 10
QUARANTINE_ROWS = 25


def installed_version_list() -> list[str]:
    """Every version the inventory expects some device to run, in semantic-version order."""
    versions = Device.objects.order_by().values_list("installed_version", flat=True).distinct()
    return sorted(versions, key=selectors._version_key)


def inventory_filter_options() -> dict[str, list[tuple[str, str]]]:
    """(value, label) choices for the inventory's filter selects, read from the inventory itself."""
    return {
        "hardware_model": [(m.name, f"{m.name} ({m.family} {m.revision})") for m in selectors.hardware_model_list()],
        "region": [(r.code, f"{r.code} — {r.name}") for r in selectors.region_list()],
        "tag": [(t.name, t.name) for t in selectors.tag_list()],
        "installed_version": [(v, v) for v in installed_version_list()],
    }


@dataclass(frozen=True)
class FleetCounts:
    """Headline numbers of the inventory."""

    total: int
    by_status: dict[str, int]
    drift: int

    @property
    def quarantined(self) -> int:
        return self.by_status.get(DeviceStatus.QUARANTINED, 0)


def fleet_counts() -> FleetCounts:
    """How many devices there are, per status, and how many drift (reported differs from expected)."""
    rows = Device.objects.order_by().values_list("status").annotate(n=Count("id"))
    by_status = {status: 0 for status in DeviceStatus.values}
    by_status.update(dict(rows))
    return FleetCounts(total=sum(by_status.values()), by_status=by_status, drift=Device.objects.filter(DRIFT_Q).count())


@dataclass(frozen=True)
class VersionChart:
    """The version distribution shaped for `{% stacked_bars %}` plus the same numbers as a table."""

    rows: list[tuple[str, dict[str, int]]]
    series: list[str]
    table: list[dict[str, Any]]


def version_chart() -> VersionChart:
    """Per hardware model, how many devices are expected on each version (decommissioned excluded)."""
    distribution = selectors.fleet_version_distribution()
    seen: set[str] = set()
    for model in distribution:
        seen.update(v["version"] for v in model["versions"])
    series = sorted(seen, key=selectors._version_key)
    rows = [(m["hardware_model"], {v["version"]: v["devices"] for v in m["versions"]}) for m in distribution]
    table = [
        {"hardware_model": label, "total": sum(values.values()), "cells": [values.get(s, 0) for s in series]}
        for label, values in rows
    ]
    return VersionChart(rows=rows, series=series, table=table)


def quarantined_device_list() -> QuerySet[Device]:
    """Quarantined devices, most recently quarantined first, with the reason kept on the device."""
    return (
        Device.objects.filter(status=DeviceStatus.QUARANTINED)
        .select_related("hardware_model", "region")
        .order_by("-updated_at", "serial")
    )


def device_recent_telemetry_summary(device: Device, *, days: int = RECENT_TELEMETRY_DAYS) -> dict[str, Any]:
    """The device's telemetry figures over the last `days` days (devices.selectors.device_telemetry_summary)."""
    return selectors.device_telemetry_summary(device=device, since=timezone.now() - timedelta(days=days))


def device_recent_telemetry(device: Device, *, limit: int = RECENT_TELEMETRY_ROWS) -> list[TelemetrySample]:
    """The device's latest telemetry samples, newest first."""
    return list(TelemetrySample.objects.filter(device=device).order_by("-reported_at", "-id")[:limit])


def device_recent_deployments(device: Device, *, limit: int = RECENT_DEPLOYMENT_ROWS) -> list[Any]:
    """The device's latest deployments, newest first.

    Read through the ORM relation that the rollouts app declares on Device: the inventory imports no
    other app (see the import-linter contracts), the relation is how it sees what was rolled out to it.
    """
    deployments = device.deployments
    return list(deployments.select_related("release", "rollout", "wave").order_by("-created_at", "-id")[:limit])
