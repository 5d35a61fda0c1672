"""One shape for inventory input: a service called without a serializer in front refuses what the API refuses."""

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.audit.models import DecisionRecord
from devices import services
from devices.models import Device, HardwareModel, Region, Tag
from ota_project.errors import InvalidInput
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db

AB_LAYOUT = {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 268435456}


def _device_values(hardware_model, region, **overrides):
    values = {
        "serial": "TCU-SHAPE-1",
        "hardware_model": hardware_model,
        "region": region,
        "vehicle_type": "bus",
        "installed_version": "1.2.0",
    }
    values.update(overrides)
    return values


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("serial", "x"),
        ("serial", "drift"),
        ("vin", "WDB9634031000000I"),
        ("installed_version", "1.2"),
        ("installed_release_counter", 2**31),
        ("installed_release_counter", -1),
        ("certificate_fingerprint", "zz" * 32),
        ("vehicle_type", "spaceship"),
        ("usage_profile", "lunar"),
    ],
)
def test_the_service_and_the_api_give_the_same_field_errors_for_a_bad_device(
    operator, hardware_model, region, field, value
):
    with pytest.raises(InvalidInput) as refused:
        services.device_create(actor=operator, **_device_values(hardware_model, region, **{field: value}))
    client = APIClient()
    client.force_authenticate(operator)
    body = _device_values(hardware_model.name, region.code, **{field: value})
    response = client.post("/api/v1/devices/", body, format="json")
    assert response.status_code == 400
    assert refused.value.fields == response.json()["error"]["fields"] == {field: refused.value.fields[field]}
    assert not Device.objects.exists() and not DecisionRecord.objects.exists()


def test_a_list_item_error_names_the_field_and_the_item(operator, hardware_model, region):
    with pytest.raises(InvalidInput) as refused:
        services.device_create(actor=operator, **_device_values(hardware_model, region, tags=["pilot", "not a slug"]))
    assert list(refused.value.fields) == ["tags"]
    assert refused.value.fields["tags"][0].startswith("item 2: ")
    assert not Device.objects.exists() and not Tag.objects.exists()


def test_a_device_on_an_unsaved_hardware_model_or_region_is_refused(operator, hardware_model, region):
    values = _device_values(HardwareModel(name="tcu-ghost"), Region(code="nowhere"))
    with pytest.raises(InvalidInput) as refused:
        services.device_create(actor=operator, **values)
    assert refused.value.fields == {
        "hardware_model": ['Unknown hardware model "tcu-ghost".'],
        "region": ['Unknown region "nowhere".'],
    }
    assert not Device.objects.exists()


def test_repeated_tags_and_capabilities_are_stored_once(operator, hardware_model, region):
    device = services.device_create(
        actor=operator,
        **_device_values(hardware_model, region, tags=["pilot", "pilot"], network_capabilities=["lte", "lte"]),
    )
    device.refresh_from_db()
    assert list(device.tags.values_list("name", flat=True)) == ["pilot"]
    assert device.network_capabilities == ["lte"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vin": "SHORT"}, "vin"),
        ({"installed_version": "latest"}, "installed_version"),
        ({"hardware_model": "tcu-4g-r2"}, "hardware_model"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_device_update_called_directly_refuses_bad_changes_and_writes_nothing(operator, changes, field):
    device = DeviceFactory.create(installed_version="1.0.0")
    if field == "hardware_model":
        changes = {"hardware_model": HardwareModel(name="tcu-4g-r2")}  # never saved
    with pytest.raises(InvalidInput) as refused:
        services.device_update(actor=operator, device=device, changes=changes)
    assert field in refused.value.fields
    assert Device.objects.get(pk=device.pk).installed_version == "1.0.0"
    assert not DecisionRecord.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"family": ""}, "family"),
        ({"revision": "r" * 33}, "revision"),
        ({"update_channel": "nightly"}, "update_channel"),
        ({"signing_scheme": "rot13"}, "signing_scheme"),
        ({"validation_checks": ["boot_ok", "boot_ok"]}, "validation_checks"),
        ({"partition_layout": {"scheme": "ab"}}, "partition_layout"),
        ({"name": "renamed"}, "name"),
    ],
)
def test_hardware_model_update_called_directly_refuses_bad_changes_and_writes_nothing(
    operator, hardware_model, changes, field
):
    before = HardwareModel.objects.filter(pk=hardware_model.pk).values().get()
    with pytest.raises(InvalidInput) as refused:
        services.hardware_model_update(actor=operator, hardware_model=hardware_model, changes=changes)
    assert field in refused.value.fields
    assert HardwareModel.objects.filter(pk=hardware_model.pk).values().get() == before
    assert not DecisionRecord.objects.exists()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"code": "not a slug"}, "code"),
        ({"name": "Nul\x00"}, "name"),
        ({"poll_interval_seconds": 5}, "poll_interval_seconds"),
        ({"max_checkins_per_window": -1}, "max_checkins_per_window"),
        ({"max_concurrent_downloads": 10**9}, "max_concurrent_downloads"),
    ],
)
def test_region_create_called_directly_refuses_bad_values_and_writes_nothing(operator, values, field):
    arguments = {"code": "eu-north", "name": "Nordics", "time_zone": "Europe/Stockholm", **values}
    with pytest.raises(InvalidInput) as refused:
        services.region_create(actor=operator, **arguments)
    assert list(refused.value.fields) == [field]
    assert not Region.objects.exists() and not DecisionRecord.objects.exists()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"active_slot": "c"}, "active_slot"),
        ({"boot_count": -1}, "boot_count"),
        ({"health": {"": True}}, "health"),
        ({"health": {f"check{n}": True for n in range(17)}}, "health"),
        ({"version": "1.0.0\x00"}, "version"),
    ],
)
def test_a_malformed_report_called_directly_is_refused_and_nothing_is_stored(values, field):
    device = DeviceFactory.create()
    report = {"version": "1.0.0", "release_counter": 1, "at": timezone.now(), **values}
    with pytest.raises(InvalidInput) as refused:
        services.device_record_report(device=device, **report)
    assert field in refused.value.fields
    device.refresh_from_db()
    assert device.reported_at is None and device.last_seen_at is None


def test_identifier_holders_names_the_device_holding_each_value():
    first = DeviceFactory.create(vin="WDB96340310000001")
    DeviceFactory.create(vin=None)
    assert services.identifier_holders("vin", ["WDB96340310000001", "WDB96340310000009", None, ""]) == {
        "WDB96340310000001": first.serial
    }
    with pytest.raises(ValueError):
        services.identifier_holders("vehicle_type", ["bus"])


@pytest.mark.parametrize(("reason", "message"), [("x" * 2001, "At most 2000 characters."), ("nul\x00", None)])
def test_a_reason_the_api_would_refuse_is_refused_by_the_service_too(operator, reason, message):
    device = DeviceFactory.create()
    with pytest.raises(InvalidInput) as refused:
        services.device_quarantine(actor=operator, device=device, reason=reason)
    assert list(refused.value.fields) == ["reason"]
    if message:
        assert refused.value.fields["reason"] == [message]
    device.refresh_from_db()
    assert device.status == "active" and not DecisionRecord.objects.exists()
