"""Inventory rules at the service: validation, uniqueness, the status transition table, reports."""

from datetime import timedelta
from itertools import product
from typing import cast

import pytest
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify
from devices import services
from devices.choices import DEVICE_TRANSITIONS, DeviceStatus
from devices.models import DRIFT_Q, Device, HardwareModel, Region, Tag
from ota_project.errors import Conflict, InvalidInput
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db

AB_LAYOUT = {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 268435456}


def _records(action: str | None = None):
    records = DecisionRecord.objects.all()
    return records.filter(action=action) if action else records


# --- hardware models and regions -------------------------------------------------------------------------------


def test_hardware_model_create_stores_it_and_records_the_decision(operator):
    hardware_model = services.hardware_model_create(
        actor=operator,
        name="tcu-5g-r1",
        family="tcu-5g",
        revision="r1",
        signing_scheme="hybrid-ecdsa-p256+ml-dsa-65",
        validation_checks=["boot_ok", "gnss_fix"],
        partition_layout=AB_LAYOUT,
    )
    assert HardwareModel.objects.get(name="tcu-5g-r1").signing_scheme == "hybrid-ecdsa-p256+ml-dsa-65"
    record = _records("devices.hardware_model.create").get()
    assert record.actor_name == operator.username and record.object_id == hardware_model.name
    assert record.after["partition_layout"] == AB_LAYOUT


@pytest.mark.parametrize(
    "layout",
    [
        {"scheme": "ab", "slots": ["a"], "slot_size_bytes": 1},
        {"scheme": "ab", "slots": ["a", "b"]},
        {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 0},
        {"scheme": "ab", "slots": ["a", "a"], "slot_size_bytes": 10},
        {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": True},
        {"scheme": "abc"},
        {"scheme": "single", "extra": 1},
        [],
    ],
)
def test_hardware_model_with_a_bad_partition_layout_is_refused(operator, layout):
    with pytest.raises(InvalidInput) as refused:
        services.hardware_model_create(
            actor=operator, name="tcu-x", family="tcu", revision="r1", partition_layout=layout
        )
    assert "partition_layout" in refused.value.fields
    assert not HardwareModel.objects.exists() and not _records().exists()


def test_hardware_model_with_unknown_validation_check_is_refused(operator):
    with pytest.raises(InvalidInput) as refused:
        services.hardware_model_create(
            actor=operator,
            name="tcu-x",
            family="tcu",
            revision="r1",
            validation_checks=["boot_ok", "smoke_test"],
            partition_layout={"scheme": "single"},
        )
    assert "smoke_test" in refused.value.fields["validation_checks"][0]


def test_hardware_model_name_is_unique(operator, hardware_model):
    with pytest.raises(InvalidInput) as refused:
        services.hardware_model_create(
            actor=operator, name=hardware_model.name, family="f", revision="r", partition_layout=AB_LAYOUT
        )
    assert "name" in refused.value.fields


def test_hardware_model_update_records_only_what_changed(operator, hardware_model):
    services.hardware_model_update(
        actor=operator,
        hardware_model=hardware_model,
        changes={"update_channel": "beta", "family": hardware_model.family},
        reason="beta programme",
    )
    hardware_model.refresh_from_db()
    assert hardware_model.update_channel == "beta"
    record = _records("devices.hardware_model.update").get()
    assert record.before == {"update_channel": "stable"} and record.after == {"update_channel": "beta"}
    assert record.reason == "beta programme"


def test_hardware_model_name_cannot_be_changed(operator, hardware_model):
    # cast: "name" is deliberately not a HardwareModelChanges key (the refusal under test)
    changes = cast(services.HardwareModelChanges, {"name": "other"})
    with pytest.raises(InvalidInput):
        services.hardware_model_update(actor=operator, hardware_model=hardware_model, changes=changes)
    assert HardwareModel.objects.get(pk=hardware_model.pk).name == "tcu-4g-r2"


def test_region_create_accepts_an_iana_zone(operator):
    region = services.region_create(actor=operator, code="ap-south", name="India", time_zone="Asia/Kolkata")
    assert Region.objects.get(code="ap-south") == region
    assert _records("devices.region.create").get().after["time_zone"] == "Asia/Kolkata"


@pytest.mark.parametrize("zone", ["Mars/Olympus_Mons", "../../etc/passwd", "", "Europe/Berlin\x00"])
def test_region_with_an_unknown_time_zone_is_refused(operator, zone):
    with pytest.raises(InvalidInput) as refused:
        services.region_create(actor=operator, code="mars", name="Mars", time_zone=zone)
    assert "time_zone" in refused.value.fields
    assert not Region.objects.exists()


# --- devices: inventory ----------------------------------------------------------------------------------------


def _create(actor, hardware_model, region, **overrides):
    values = {
        "serial": "TCU-0001",
        "hardware_model": hardware_model,
        "region": region,
        "vehicle_type": "bus",
        "installed_version": "1.2.0",
        "installed_release_counter": 12,
        "vin": "wdb96340310000001",
        "tags": ["pilot", "depot-7"],
        "network_capabilities": ["lte", "wifi"],
        "certificate_fingerprint": "AB" * 32,
    }
    values.update(overrides)
    return services.device_create(actor=actor, **values)


def test_device_create_normalizes_identifiers_and_records_the_decision(operator, hardware_model, region):
    device = _create(operator, hardware_model, region)
    device.refresh_from_db()
    assert device.status == DeviceStatus.ACTIVE
    assert device.vin == "WDB96340310000001" and device.certificate_fingerprint == "ab" * 32
    assert sorted(device.tags.values_list("name", flat=True)) == ["depot-7", "pilot"]
    record = _records("devices.device.create").get()
    assert record.object_id == "TCU-0001" and record.after["tags"] == ["depot-7", "pilot"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("serial", "x"),
        ("serial", "-starts-with-dash"),
        ("serial", "import"),
        ("vin", "WDB9634031000000I"),
        ("vin", "SHORT"),
        ("installed_version", "1.2"),
        ("installed_version", "v1.2.0"),
        ("installed_version", "01.2.0"),
        ("installed_release_counter", -1),
        ("certificate_fingerprint", "zz" * 32),
        ("network_capabilities", ["lte", "carrier-pigeon"]),
        ("vehicle_type", "spaceship"),
        ("tags", ["not a slug"]),
    ],
)
def test_device_with_an_invalid_field_is_refused_and_nothing_is_written(operator, hardware_model, region, field, value):
    with pytest.raises(InvalidInput) as refused:
        _create(operator, hardware_model, region, **{field: value})
    assert field in refused.value.fields
    assert not Device.objects.exists() and not Tag.objects.exists() and not _records().exists()


@pytest.mark.parametrize("field", ["serial", "vin", "certificate_fingerprint"])
def test_device_identifiers_are_unique(operator, hardware_model, region, field):
    _create(operator, hardware_model, region)
    other = {"serial": "TCU-0002", "vin": "WDB96340310000002", "certificate_fingerprint": "cd" * 32}
    other.pop(field)
    with pytest.raises(InvalidInput) as refused:
        _create(operator, hardware_model, region, **other)
    assert list(refused.value.fields) == [field]
    assert Device.objects.count() == 1


def test_device_update_changes_inventory_fields_and_records_before_and_after(operator, hardware_model, region):
    device = _create(operator, hardware_model, region)
    services.device_update(
        actor=operator,
        device=device,
        changes={"installed_version": "1.3.0", "installed_release_counter": 13, "tags": ["pilot"]},
        reason="confirmed by workshop",
    )
    device.refresh_from_db()
    assert (device.installed_version, device.installed_release_counter) == ("1.3.0", 13)
    assert list(device.tags.values_list("name", flat=True)) == ["pilot"]
    record = _records("devices.device.update").get()
    assert record.before == {
        "installed_version": "1.2.0",
        "installed_release_counter": 12,
        "tags": ["depot-7", "pilot"],
    }
    assert record.after == {"installed_version": "1.3.0", "installed_release_counter": 13, "tags": ["pilot"]}


def test_device_update_without_changes_records_nothing(operator, hardware_model, region):
    device = _create(operator, hardware_model, region)
    services.device_update(actor=operator, device=device, changes={"vehicle_type": "bus"})
    assert not _records("devices.device.update").exists()


@pytest.mark.parametrize("field", ["status", "serial"])
def test_device_update_cannot_change_status_or_serial(operator, hardware_model, region, field):
    device = _create(operator, hardware_model, region)
    with pytest.raises(InvalidInput):
        # cast: status and serial are deliberately not DeviceChanges keys (the refusal under test)
        services.device_update(actor=operator, device=device, changes=cast(services.DeviceChanges, {field: "revoked"}))
    device.refresh_from_db()
    assert device.status == DeviceStatus.ACTIVE and device.serial == "TCU-0001"


def test_device_update_refuses_a_vin_another_device_has(operator, hardware_model, region):
    first = _create(operator, hardware_model, region)
    second = _create(
        operator, hardware_model, region, serial="TCU-0002", vin="WDB96340310000002", certificate_fingerprint=None
    )
    with pytest.raises(InvalidInput) as refused:
        services.device_update(actor=operator, device=second, changes={"vin": first.vin})
    assert "vin" in refused.value.fields
    second.refresh_from_db()
    assert second.vin == "WDB96340310000002"


# --- devices: status -------------------------------------------------------------------------------------------

ALL_STATUSES = list(DeviceStatus.values)


@pytest.mark.parametrize(("current", "target"), list(product(ALL_STATUSES, ALL_STATUSES)))
def test_status_moves_follow_the_transition_table(operator, current, target):
    device = DeviceFactory.create(status=current, status_reason="before")
    allowed = target in DEVICE_TRANSITIONS[current]
    if current == target:
        services.device_set_status(actor=operator, device=device, status=target, reason="again")
        device.refresh_from_db()
        assert (device.status, device.status_reason) == (current, "before")
        assert not _records().exists()
    elif allowed:
        services.device_set_status(actor=operator, device=device, status=target, reason="incident 42")
        device.refresh_from_db()
        assert (device.status, device.status_reason) == (target, "incident 42")
        record = _records().get()
        assert record.action == f"devices.device.{services.STATUS_ACTIONS[target]}"
        assert (record.before, record.after, record.reason) == ({"status": current}, {"status": target}, "incident 42")
    else:
        with pytest.raises(Conflict) as refused:
            services.device_set_status(actor=operator, device=device, status=target, reason="incident 42")
        assert refused.value.code == "invalid_transition"
        device.refresh_from_db()
        assert (device.status, device.status_reason) == (current, "before")
        assert not _records().exists()


@pytest.mark.parametrize("service", [services.device_quarantine, services.device_revoke])
@pytest.mark.parametrize("reason", ["", "   "])
def test_quarantine_and_revoke_need_a_reason(operator, service, reason):
    device = DeviceFactory.create()
    with pytest.raises(InvalidInput) as refused:
        service(actor=operator, device=device, reason=reason)
    assert "reason" in refused.value.fields
    device.refresh_from_db()
    assert device.status == DeviceStatus.ACTIVE and not _records().exists()


def test_release_and_decommission_need_no_reason(operator):
    device = DeviceFactory.create(status=DeviceStatus.QUARANTINED)
    services.device_release_from_quarantine(actor=operator, device=device)
    services.device_decommission(actor=operator, device=device)
    device.refresh_from_db()
    assert device.status == DeviceStatus.DECOMMISSIONED
    assert list(_records().values_list("action", flat=True)) == [
        "devices.device.release",
        "devices.device.decommission",
    ]


def test_a_stale_device_instance_is_judged_by_the_stored_status(operator):
    device = DeviceFactory.create()
    stale = Device.objects.get(pk=device.pk)
    services.device_revoke(actor=operator, device=device, reason="key leaked")
    with pytest.raises(Conflict):
        services.device_release_from_quarantine(actor=operator, device=stale)
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.REVOKED


def test_status_moves_keep_the_decision_chain_intact(operator):
    device = DeviceFactory.create()
    services.device_quarantine(actor=operator, device=device, reason="bad modem firmware")
    services.device_release_from_quarantine(actor=operator, device=device, reason="fixed")
    services.device_revoke(actor=operator, device=device, reason="stolen vehicle")
    verdict = chain_verify()
    assert verdict.ok and verdict.length == 3


def test_a_reason_that_is_not_valid_unicode_is_refused(operator):
    device = DeviceFactory.create()
    with pytest.raises(InvalidInput):
        services.device_quarantine(actor=operator, device=device, reason="bad \ud800")
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ACTIVE


# --- devices: reports and drift --------------------------------------------------------------------------------


def test_a_report_matching_the_inventory_is_not_drift():
    device = DeviceFactory.create(installed_version="1.0.0", installed_release_counter=1)
    now = timezone.now()
    services.device_record_report(device=device, version="1.0.0", release_counter=1, at=now)
    assert device.reported_at == now and device.last_seen_at == now
    assert not device.has_drift
    assert not Device.objects.filter(DRIFT_Q, pk=device.pk).exists()


def test_a_report_differing_from_the_inventory_is_drift():
    device = DeviceFactory.create(installed_version="1.0.0", installed_release_counter=1)
    services.device_record_report(device=device, version="0.9.0", release_counter=1, at=timezone.now())
    assert device.has_drift
    assert not _records().exists()


def test_an_older_report_never_overwrites_a_newer_one():
    device = DeviceFactory.create()
    now = timezone.now()
    services.device_record_report(device=device, version="2.0.0", release_counter=2, at=now)
    services.device_record_report(device=device, version="1.0.0", release_counter=1, at=now - timedelta(minutes=5))
    device.refresh_from_db()
    assert (device.reported_version, device.reported_release_counter, device.reported_at) == ("2.0.0", 2, now)
    assert device.last_seen_at == now


@pytest.mark.parametrize(("version", "counter"), [("latest", 1), ("1.0.0", -1), ("1.0.0", 2**31)])
def test_a_malformed_report_is_refused(version, counter):
    device = DeviceFactory.create()
    with pytest.raises(InvalidInput):
        services.device_record_report(device=device, version=version, release_counter=counter, at=timezone.now())
    device.refresh_from_db()
    assert device.reported_at is None
