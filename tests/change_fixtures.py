"""A small fleet and changes at each stage (ready, submitted, approved), built through the services."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from approvals import services
from approvals.plans import default_plan
from tests.factories import DeviceFactory, FirmwareReleaseFactory, HardwareModelFactory, RegionFactory

SAFE_ANSWERS = {
    "safety_relevant": False,
    "component": "application",
    "tested_on_all_models": True,
    "rollback_tested": True,
    "security_fix": False,
}


@pytest.fixture
def fleet(db) -> dict[str, Any]:
    """20 active devices on 1.0.0 (2 tagged pilot) plus 80 devices elsewhere, so the scope is 20% of the fleet.

    1.1.0 is an ordinary release in the same security epoch (counter 1), so 1.0.0 stays a valid rollback target."""
    model = HardwareModelFactory.create(name="tcu-4g-r2")
    other_model = HardwareModelFactory.create(name="tcu-5g-r1")
    region = RegionFactory.create(code="eu-west", time_zone="Europe/Paris")
    old = FirmwareReleaseFactory.create(version="1.0.0", release_counter=1, hardware_models=[model, other_model])
    new = FirmwareReleaseFactory.create(version="1.1.0", release_counter=1, hardware_models=[model])
    DeviceFactory.create_batch(2, hardware_model=model, region=region, tags=["pilot"])
    DeviceFactory.create_batch(18, hardware_model=model, region=region)
    DeviceFactory.create_batch(80, hardware_model=other_model, region=region)
    return {"model": model, "other_model": other_model, "region": region, "old": old, "new": new}


@pytest.fixture
def change_fields(fleet) -> dict[str, Any]:
    now = timezone.now()
    return {
        "title": "Modem reconnect fix",
        "justification": "Units lose LTE after tunnel handover.",
        "release": fleet["new"],
        "rollback_release": fleet["old"],
        "target_scope": {"hardware_models": ["tcu-4g-r2"]},
        "impact_analysis": "One reboot per unit, during parking.",
        "requested_window_start": now - timedelta(hours=1),
        "requested_window_end": now + timedelta(days=7),
        "rollout_plan": default_plan().to_json(),
        "risk_answers": dict(SAFE_ANSWERS),
    }


@pytest.fixture
def submitted_change(requester, change_fields):
    change = services.change_create(actor=requester, **change_fields)
    return services.change_submit(actor=requester, change=change)


@pytest.fixture
def approved_change(submitted_change, cab_member, cab_member_2):
    services.approval_grant(actor=cab_member, change=submitted_change, revision=1)
    return services.approval_grant(actor=cab_member_2, change=submitted_change, revision=1)
