"""Region load budget and check-in state at the service level: recorded changes, refusals, out-of-order reports."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from devices.models import Device, Region
from devices.services import device_record_report, region_update
from ota_project.errors import InvalidInput

pytestmark = pytest.mark.django_db


def test_region_budget_changes_are_recorded_with_before_and_after(fleet, operator):
    region_update(
        actor=operator,
        region=fleet["region"],
        changes={"poll_interval_seconds": 900, "max_concurrent_downloads": 40},
        reason="satellite backhaul maintenance",
    )
    record = DecisionRecord.objects.get(action="devices.region.update")
    assert record.object_id == "eu-west" and record.reason == "satellite backhaul maintenance"
    assert record.before == {"poll_interval_seconds": None, "max_concurrent_downloads": None}
    assert record.after == {"poll_interval_seconds": 900, "max_concurrent_downloads": 40}
    region_update(actor=operator, region=fleet["region"], changes={"poll_interval_seconds": 900})
    assert DecisionRecord.objects.filter(action="devices.region.update").count() == 1  # no change, no record


@pytest.mark.parametrize(
    "changes",
    [
        {"poll_interval_seconds": 5},
        {"poll_interval_seconds": 86_401},
        {"max_checkins_per_window": -1},
        {"max_concurrent_downloads": True},
        {"time_zone": "UTC"},
        {"code": "other"},
    ],
)
def test_invalid_region_budget_is_refused_and_changes_nothing(fleet, operator, changes):
    with pytest.raises(InvalidInput) as refused:
        region_update(actor=operator, region=fleet["region"], changes=changes)
    assert set(refused.value.fields) == set(changes)
    region = Region.objects.get(pk=fleet["region"].pk)
    assert (region.poll_interval_seconds, region.time_zone, region.code) == (None, "Europe/Paris", "eu-west")
    assert not DecisionRecord.objects.filter(action="devices.region.update").exists()


def test_an_older_report_never_overwrites_a_newer_one(fleet):
    device = Device.objects.filter(region=fleet["region"]).first()
    assert device is not None
    now = timezone.now()
    device_record_report(device=device, version="1.1.0", release_counter=2, at=now, active_slot="b", boot_count=1)
    device_record_report(
        device=device, version="1.0.0", release_counter=1, at=now - timedelta(minutes=5), active_slot="a", boot_count=9
    )
    device.refresh_from_db()
    assert (device.reported_version, device.reported_active_slot, device.reported_boot_count) == ("1.1.0", "b", 1)
    assert device.last_seen_at == now
