"""Reads: filters, lookup by serial, drift, version distribution."""

import pytest
from django.http import Http404
from django.utils import timezone

from devices import selectors
from devices.choices import DeviceStatus
from tests.factories import DeviceFactory, HardwareModelFactory, RegionFactory

pytestmark = pytest.mark.django_db


def _serials(devices) -> list[str]:
    return [device.serial for device in devices]


def test_device_list_combines_filters_with_and():
    bus_pilot = DeviceFactory.create(serial="BUS-1", vehicle_type="bus", tags=["pilot"])
    DeviceFactory(serial="BUS-2", vehicle_type="bus")
    DeviceFactory(serial="TRUCK-1", tags=["pilot"])
    assert _serials(selectors.device_list(vehicle_type="bus", tag="pilot")) == [bus_pilot.serial]
    assert _serials(selectors.device_list(tag="pilot")) == ["BUS-1", "TRUCK-1"]


def test_device_list_filters_by_hardware_model_region_status_version_and_search():
    hardware_model = HardwareModelFactory.create(name="tcu-5g-r1")
    region = RegionFactory.create(code="us-east", time_zone="America/New_York")
    target = DeviceFactory.create(
        serial="TCU-A1",
        vin="1FTFW1ET5DFC10312",
        hardware_model=hardware_model,
        region=region,
        installed_version="2.0.0",
    )
    DeviceFactory(serial="TCU-B1", status=DeviceStatus.QUARANTINED)
    assert _serials(selectors.device_list(hardware_model="tcu-5g-r1")) == [target.serial]
    assert _serials(selectors.device_list(region="us-east")) == [target.serial]
    assert _serials(selectors.device_list(installed_version="2.0.0")) == [target.serial]
    assert _serials(selectors.device_list(status=DeviceStatus.QUARANTINED)) == ["TCU-B1"]
    assert _serials(selectors.device_list(search="dfc103")) == [target.serial]
    assert _serials(selectors.device_list(search="b1")) == ["TCU-B1"]


def test_a_device_with_two_matching_tags_is_listed_once():
    DeviceFactory(tags=["pilot", "eu"])
    assert selectors.device_list(tag="pilot").count() == 1


def test_drift_lists_only_devices_whose_report_differs():
    now = timezone.now()
    drifting = DeviceFactory.create(
        serial="DRIFT-1", reported_version="0.9.0", reported_release_counter=1, reported_at=now
    )
    DeviceFactory(serial="DRIFT-2", reported_version="1.0.0", reported_release_counter=0, reported_at=now)
    DeviceFactory(serial="OK-1", reported_version="1.0.0", reported_release_counter=1, reported_at=now)
    DeviceFactory(serial="NEVER-REPORTED")
    assert _serials(selectors.device_drift_list()) == [drifting.serial, "DRIFT-2"]
    assert _serials(selectors.device_list(drift=False)) == ["NEVER-REPORTED", "OK-1"]
    assert _serials(selectors.device_list(drift=True)) == ["DRIFT-1", "DRIFT-2"]


def test_device_get_by_serial_never_falls_back_to_an_id():
    device = DeviceFactory.create(serial="TCU-X1")
    assert selectors.device_get(serial_or_id="TCU-X1") == device
    assert selectors.device_get(serial_or_id=device.pk) == device
    with pytest.raises(Http404):
        selectors.device_get(serial_or_id=str(device.pk))
    with pytest.raises(Http404):
        selectors.device_get(serial_or_id=2**70)


def test_version_distribution_counts_per_hardware_model_in_version_order():
    first = HardwareModelFactory.create(name="tcu-a")
    second = HardwareModelFactory.create(name="tcu-b")
    for version in ["1.10.0", "1.9.0", "1.9.0", "2.0.0-rc.1", "2.0.0"]:
        DeviceFactory(hardware_model=first, installed_version=version)
    DeviceFactory(hardware_model=second, installed_version="3.0.0")
    DeviceFactory(hardware_model=second, installed_version="3.0.0", status=DeviceStatus.DECOMMISSIONED)
    assert selectors.fleet_version_distribution() == [
        {
            "hardware_model": "tcu-a",
            "devices": 5,
            "versions": [
                {"version": "1.9.0", "devices": 2},
                {"version": "1.10.0", "devices": 1},
                {"version": "2.0.0-rc.1", "devices": 1},
                {"version": "2.0.0", "devices": 1},
            ],
        },
        {"hardware_model": "tcu-b", "devices": 1, "versions": [{"version": "3.0.0", "devices": 1}]},
    ]
