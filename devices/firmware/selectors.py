"""Reads for firmware releases: lists with filters, one release (404 when missing), latest counters."""

from __future__ import annotations

from django.db.models import Max, QuerySet
from django.shortcuts import get_object_or_404

from devices.firmware.models import FirmwareRelease
from devices.models import HardwareModel


def release_list() -> QuerySet[FirmwareRelease]:
    """All releases, newest first, with their artifact, author and hardware models loaded."""
    return FirmwareRelease.objects.select_related("artifact", "created_by").prefetch_related("hardware_models")


def release_get(*, release_id: int) -> FirmwareRelease:
    """One release by id; Http404 when there is none."""
    return get_object_or_404(release_list(), pk=release_id)


def release_latest_counter(hardware_model: HardwareModel | str) -> int | None:
    """The highest release counter of any release for this hardware model (None before the first release)."""
    lookup: dict[str, HardwareModel | str] = (
        {"hardware_models__name": hardware_model}
        if isinstance(hardware_model, str)
        else {"hardware_models": hardware_model}
    )
    return FirmwareRelease.objects.filter(**lookup).aggregate(latest=Max("release_counter"))["latest"]


def release_latest_counters(hardware_models: list[HardwareModel]) -> dict[int, int]:
    """{hardware model id: highest release counter} for the given models (models without releases absent)."""
    rows = (
        FirmwareRelease.hardware_models.through.objects.filter(hardwaremodel__in=hardware_models)
        .values("hardwaremodel_id")
        .annotate(latest=Max("firmwarerelease__release_counter"))
    )
    return {row["hardwaremodel_id"]: row["latest"] for row in rows}
