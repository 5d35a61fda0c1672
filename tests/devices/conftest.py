"""Fixtures for the fleet inventory tests: a hardware model, a region, users without a role, file builders."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from tests.factories import HardwareModelFactory, RegionFactory


@pytest.fixture
def hardware_model(db):
    return HardwareModelFactory(name="tcu-4g-r2")


@pytest.fixture
def region(db):
    return RegionFactory(code="eu-west", time_zone="Europe/Berlin")


@pytest.fixture
def no_role_user(make_user):
    return make_user(username="nora-norole")


@pytest.fixture
def device_row(hardware_model, region) -> Callable[..., dict[str, Any]]:
    """device_row(3, tags=["pilot"]) -> one valid import row (JSON shape) for serial TCU-IMPORT-00003."""

    def _row(n: int, **overrides: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "serial": f"TCU-IMPORT-{n:05d}",
            "vin": f"WDB{n:014d}",
            "hardware_model": hardware_model.name,
            "region": region.code,
            "vehicle_type": "heavy_truck",
            "usage_profile": "highway",
            "tags": ["pilot"] if n % 2 else [],
            "network_capabilities": ["lte", "satellite"],
            "installed_version": "1.4.2",
            "installed_release_counter": 14,
            "certificate_fingerprint": f"{n:064x}",
        }
        row.update(overrides)
        return row

    return _row
