"""Fleet pages: who may open them, search and filters, the version chart, drift, and the quarantine release."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from devices import services
from devices.choices import DeviceStatus
from devices.models import Device, TelemetrySample
from ota_project.roles import Role
from tests.factories import DeviceFactory
from tests.support.html import accessible_name, badges, find, find_all, row_cells, visible_text
from tests.web.helpers import page_client

pytestmark = pytest.mark.django_db

INVENTORY = reverse("web-fleet:inventory")


def _serials(response) -> list[str]:
    return [device.serial for device in response.context["page"].object_list]


def _first_device() -> Device:
    """The fleet's first device by serial (for tests over the `fleet` fixture, which has devices)."""
    device = Device.objects.order_by("serial").first()
    assert device is not None
    return device


def _device_url(serial: str) -> str:
    return reverse("web-fleet:device", args=[serial])


def _release_url(serial: str) -> str:
    return reverse("web-fleet:release", args=[serial])


# --- Access ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("url_of", [lambda d: INVENTORY, lambda d: _device_url(d.serial)])
def test_anonymous_is_sent_to_sign_in(fleet, url_of):
    url = url_of(Device.objects.first())
    response = page_client().get(url)
    assert response.status_code == 302
    assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("url_of", [lambda d: INVENTORY, lambda d: _device_url(d.serial)])
def test_user_without_a_role_gets_403(fleet, nobody, url_of):
    response = page_client(nobody).get(url_of(Device.objects.first()))
    assert response.status_code == 403
    assert "role to see this page" in response.content.decode()


@pytest.mark.parametrize("role", list(Role.values))
def test_every_role_reads_the_inventory_and_a_device(fleet, make_user, role):
    user = make_user(role)
    device = _first_device()
    response = page_client(user).get(INVENTORY)
    assert response.status_code == 200
    assert response.context["page"].paginator.count == 100
    assert device.serial in response.content.decode()
    assert page_client(user).get(_device_url(device.serial)).status_code == 200


def test_unknown_device_is_404(fleet, auditor):
    assert page_client(auditor).get(_device_url("NO-SUCH-UNIT")).status_code == 404


# --- Search, filters, pagination -------------------------------------------------------------------------------


def test_search_finds_by_part_of_serial_or_vin(fleet, operator):
    DeviceFactory.create(
        serial="ZZ-SPECIAL-1", hardware_model=fleet["model"], region=fleet["region"], vin="1HGCM82633A004352"
    )
    client = page_client(operator)
    assert _serials(client.get(INVENTORY, {"q": "special"})) == ["ZZ-SPECIAL-1"]
    assert _serials(client.get(INVENTORY, {"q": "A004352"})) == ["ZZ-SPECIAL-1"]
    empty = client.get(INVENTORY, {"q": "nothing-like-this"})
    assert _serials(empty) == []
    assert "No device matches these filters." in empty.content.decode()


def test_filters_combine(fleet, operator, make_user):
    other_region = DeviceFactory.create(
        serial="ASIA-0001", hardware_model=fleet["model"], region__code="ap-south", tags=["pilot"]
    ).region
    DeviceFactory.create(
        serial="ASIA-0002", hardware_model=fleet["other_model"], region=other_region, installed_version="1.1.0"
    )
    client = page_client(operator)
    assert _serials(client.get(INVENTORY, {"region": "ap-south"})) == ["ASIA-0001", "ASIA-0002"]
    assert _serials(client.get(INVENTORY, {"region": "ap-south", "hardware_model": "tcu-4g-r2"})) == ["ASIA-0001"]
    assert len(_serials(client.get(INVENTORY, {"tag": "pilot"}))) == 3
    assert _serials(client.get(INVENTORY, {"installed_version": "1.1.0"})) == ["ASIA-0002"]
    assert client.get(INVENTORY, {"hardware_model": "tcu-5g-r1"}).context["page"].paginator.count == 81


def test_status_and_drift_filters(fleet, operator):
    devices = list(Device.objects.order_by("serial")[:3])
    services.device_quarantine(actor=operator, device=devices[0], reason="tamper alarm")
    services.device_record_report(device=devices[1], version="1.2.0", release_counter=3, at=timezone.now())
    services.device_record_report(device=devices[2], version="1.0.0", release_counter=1, at=timezone.now())
    client = page_client(operator)
    assert _serials(client.get(INVENTORY, {"status": "quarantined"})) == [devices[0].serial]
    drifting = client.get(INVENTORY, {"drift": "on"})
    assert _serials(drifting) == [devices[1].serial]
    assert "1.2.0" in drifting.content.decode()
    assert drifting.context["counts"].drift == 1


def test_an_invalid_filter_is_a_form_error_not_a_list(fleet, operator):
    response = page_client(operator).get(INVENTORY, {"status": "exploded", "region": "atlantis"})
    assert response.status_code == 200
    assert response.context["page"] is None
    assert set(response.context["form"].errors) == {"status", "region"}
    body = response.content.decode()
    assert "These filters cannot be applied." in body
    assert "Select a valid choice." in body


def test_inventory_is_paginated_and_keeps_the_filters(fleet, operator):
    client = page_client(operator)
    first = client.get(INVENTORY, {"hardware_model": "tcu-5g-r1"})
    assert len(_serials(first)) == 50
    assert 'href="?hardware_model=tcu-5g-r1&amp;page=2"' in first.content.decode()
    second = client.get(INVENTORY, {"hardware_model": "tcu-5g-r1", "page": "2"})
    assert len(_serials(second)) == 30
    assert not set(_serials(first)) & set(_serials(second))
    # A page number out of range shows the last page rather than failing.
    assert _serials(client.get(INVENTORY, {"hardware_model": "tcu-5g-r1", "page": "99"})) == _serials(second)


def test_version_distribution_chart_with_numbers(fleet, operator):
    DeviceFactory.create_batch(3, hardware_model=fleet["model"], region=fleet["region"], installed_version="1.1.0")
    response = page_client(operator).get(INVENTORY)
    chart = response.context["chart"]
    assert chart.series == ["1.0.0", "1.1.0"]
    assert dict(chart.rows) == {"tcu-4g-r2": {"1.0.0": 20, "1.1.0": 3}, "tcu-5g-r1": {"1.0.0": 80}}
    figure = find(response.content, "figure", class_="stacked-bars")
    assert [visible_text(label) for label in find_all(figure, "text", text_anchor="end")] == ["tcu-4g-r2", "tcu-5g-r1"]
    assert [accessible_name(segment) for segment in find_all(figure, "rect")] == [
        "tcu-4g-r2 – 1.0.0: 20",
        "tcu-4g-r2 – 1.1.0: 3",
        "tcu-5g-r1 – 1.0.0: 80",
    ]
    assert row_cells(figure, "tcu-4g-r2") == ["20", "3", "23"]  # the numbers table, with the total


def test_empty_inventory_has_a_designed_empty_state(operator):
    body = page_client(operator).get(INVENTORY).content.decode()
    assert "The inventory holds no devices yet." in body
    assert "No devices in service" in body
    assert "No device is quarantined." in body


# --- Quarantine ------------------------------------------------------------------------------------------------


@pytest.fixture
def quarantined(fleet, operator) -> Device:
    device = _first_device()
    return services.device_quarantine(actor=operator, device=device, reason="Unexpected reboots after tamper alarm")


def test_quarantined_devices_are_listed_with_their_reason(quarantined, operator, cab_member):
    for user in (operator, cab_member):
        body = page_client(user).get(INVENTORY).content.decode()
        assert quarantined.serial in body
        assert "Unexpected reboots after tamper alarm" in body
    assert "Release from quarantine" in page_client(operator).get(INVENTORY).content.decode()
    cab_body = page_client(cab_member).get(INVENTORY).content.decode()
    assert "Release from quarantine" not in cab_body
    assert "Only operators can release devices from quarantine" in cab_body


def test_auditors_get_a_link_to_the_quarantine_record(quarantined, auditor):
    body = page_client(auditor).get(INVENTORY).content.decode()
    assert f"object_id={quarantined.serial}&amp;action=devices.device.quarantine" in body


def test_operator_releases_a_device_with_a_reason(quarantined, operator):
    client = page_client(operator)
    response = client.post(
        _release_url(quarantined.serial) + "?next=/fleet/%3Fstatus%3Dquarantined",
        {"reason": "Investigated: loose power connector, fixed"},
    )
    assert response.status_code == 302
    assert response["Location"] == "/fleet/?status=quarantined"
    quarantined.refresh_from_db()
    assert quarantined.status == DeviceStatus.ACTIVE
    record = DecisionRecord.objects.order_by("-seq").first()
    assert record is not None
    assert (record.action, record.object_id, record.actor_name) == (
        "devices.device.release",
        quarantined.serial,
        operator.username,
    )
    assert record.reason == "Investigated: loose power connector, fixed"
    page = client.get(response["Location"])
    assert "was released from quarantine" in page.content.decode()


def test_release_without_a_reason_changes_nothing(quarantined, operator):
    records = DecisionRecord.objects.count()
    response = page_client(operator).post(_release_url(quarantined.serial), {"reason": "   "}, follow=True)
    assert response.status_code == 200
    assert "A reason is required to release a device from quarantine." in response.content.decode()
    quarantined.refresh_from_db()
    assert quarantined.status == DeviceStatus.QUARANTINED
    assert DecisionRecord.objects.count() == records


def test_release_refusal_from_the_service_is_shown_and_changes_nothing(fleet, operator):
    device = services.device_revoke(actor=operator, device=_first_device(), reason="credential leaked")
    records = DecisionRecord.objects.count()
    response = page_client(operator).post(_release_url(device.serial), {"reason": "try anyway"}, follow=True)
    assert response.status_code == 200
    assert "was not released: A revoked device cannot be moved to active." in response.content.decode()
    device.refresh_from_db()
    assert device.status == DeviceStatus.REVOKED
    assert DecisionRecord.objects.count() == records


def test_releasing_an_active_device_says_nothing_changed(fleet, operator):
    device = _first_device()
    records = DecisionRecord.objects.count()
    response = page_client(operator).post(_release_url(device.serial), {"reason": "just in case"}, follow=True)
    assert "is not quarantined; nothing changed." in response.content.decode()
    assert DecisionRecord.objects.count() == records


@pytest.mark.parametrize("role", [r for r in Role.values if r != Role.OPERATOR])
def test_only_operators_may_release(quarantined, make_user, role):
    response = page_client(make_user(role)).post(_release_url(quarantined.serial), {"reason": "not mine to do"})
    assert response.status_code == 403
    quarantined.refresh_from_db()
    assert quarantined.status == DeviceStatus.QUARANTINED


def test_anonymous_release_is_sent_to_sign_in(quarantined):
    response = page_client().post(_release_url(quarantined.serial), {"reason": "x"})
    assert response.status_code == 302 and response["Location"].startswith("/login/")
    quarantined.refresh_from_db()
    assert quarantined.status == DeviceStatus.QUARANTINED


def test_release_ignores_a_next_url_off_site(quarantined, operator):
    response = page_client(operator).post(
        _release_url(quarantined.serial) + "?next=https://evil.example/", {"reason": "fixed"}
    )
    assert response["Location"] == _device_url(quarantined.serial)


def test_release_is_post_only(quarantined, operator):
    assert page_client(operator).get(_release_url(quarantined.serial)).status_code == 405


# --- Device page -----------------------------------------------------------------------------------------------


def test_device_page_shows_state_drift_and_telemetry(fleet, cab_member):
    device = _first_device()
    services.device_record_report(device=device, version="1.0.1", release_counter=1, at=timezone.now())
    now = timezone.now()
    TelemetrySample.objects.bulk_create(
        [
            TelemetrySample(device=device, reported_at=now - timedelta(hours=1), boot_time_s=30, unexpected_reboots=1),
            TelemetrySample(device=device, reported_at=now - timedelta(hours=2), boot_time_s=40, unexpected_reboots=0),
            TelemetrySample(device=device, reported_at=now - timedelta(days=30), boot_time_s=999),
        ]
    )
    response = page_client(cab_member).get(_device_url(device.serial))
    body = response.content.decode()
    assert response.context["telemetry"]["samples"] == 2
    assert "35.0 s" in body  # mean boot time of the last 7 days, the old sample left out
    assert "Drift: the device reports 1.0.1" in body
    assert reverse("web-trace:vehicle-register", args=[device.serial]) in body
    assert "No rollout has targeted this device yet." in body


def test_device_page_lists_its_deployments(rolled_out, operator):
    device = rolled_out["succeeded"].device
    response = page_client(operator).get(_device_url(device.serial))
    body = response.content.decode()
    assert [d.pk for d in response.context["deployments"]] == [rolled_out["succeeded"].pk]
    assert reverse("web-trace:change-trace", args=[rolled_out["change"].pk]) in body
    assert ("Succeeded", "succeeded") in badges(body)


def test_device_page_release_action_for_operators_only(quarantined, operator, requester):
    assert "Release from quarantine" in page_client(operator).get(_device_url(quarantined.serial)).content.decode()
    body = page_client(requester).get(_device_url(quarantined.serial)).content.decode()
    assert "Release from quarantine" not in body
    assert "Only operators can release a device from quarantine." in body
    assert "Unexpected reboots after tamper alarm" in body
