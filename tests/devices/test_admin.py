"""Admin: status actions and hardware model forms go through the services (and so into the decision record)."""

import pytest
from django.test import Client

from approvals.audit.models import DecisionRecord
from devices.choices import DeviceStatus
from devices.models import Device, HardwareModel
from tests.factories import DeviceFactory, UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/devices/device/"


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(UserFactory.create(username="root", is_staff=True, is_superuser=True))
    return client


def _action(client, action: str, devices, reason: str = ""):
    return client.post(
        CHANGELIST,
        {"action": action, "_selected_action": [d.pk for d in devices], "reason": reason, "index": 0},
        follow=True,
    )


def test_admin_quarantine_action_calls_the_service_with_the_reason(admin_client):
    devices = [DeviceFactory(), DeviceFactory()]
    response = _action(admin_client, "quarantine", devices, reason="suspicious traffic")
    assert response.status_code == 200
    assert set(Device.objects.values_list("status", "status_reason")) == {
        (DeviceStatus.QUARANTINED, "suspicious traffic")
    }
    assert DecisionRecord.objects.filter(action="devices.device.quarantine", actor_name="root").count() == 2


def test_admin_quarantine_without_a_reason_changes_nothing(admin_client):
    device = DeviceFactory.create()
    response = _action(admin_client, "quarantine", [device])
    assert "A reason is required" in response.content.decode()
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ACTIVE
    assert not DecisionRecord.objects.exists()


def test_admin_release_action_releases_quarantined_devices(admin_client):
    device = DeviceFactory.create(status=DeviceStatus.QUARANTINED)
    _action(admin_client, "release", [device])
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ACTIVE
    assert DecisionRecord.objects.get().action == "devices.device.release"


def test_admin_cannot_edit_devices_directly(admin_client):
    device = DeviceFactory.create()
    response = admin_client.post(f"{CHANGELIST}{device.pk}/change/", {"status": "revoked"})
    assert response.status_code == 403
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ACTIVE


def test_admin_hardware_model_form_creates_through_the_service(admin_client):
    response = admin_client.post(
        "/admin/devices/hardwaremodel/add/",
        {
            "name": "tcu-admin-1",
            "family": "tcu",
            "revision": "r1",
            "update_channel": "stable",
            "signing_scheme": "ed25519",
            "validation_checks": '["boot_ok"]',
            "partition_layout": '{"scheme": "single"}',
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert HardwareModel.objects.get(name="tcu-admin-1").signing_scheme == "ed25519"
    assert DecisionRecord.objects.get().action == "devices.hardware_model.create"


def test_admin_hardware_model_form_shows_rule_violations(admin_client):
    response = admin_client.post(
        "/admin/devices/hardwaremodel/add/",
        {
            "name": "tcu-admin-1",
            "family": "tcu",
            "revision": "r1",
            "update_channel": "stable",
            "signing_scheme": "ed25519",
            "validation_checks": '["warp_drive"]',
            "partition_layout": '{"scheme": "ab"}',
        },
    )
    assert response.status_code == 200
    assert "warp_drive" in response.content.decode()
    assert not HardwareModel.objects.exists() and not DecisionRecord.objects.exists()


def test_admin_pages_render(admin_client, hardware_model, region):
    DeviceFactory(hardware_model=hardware_model, region=region)
    for path in [
        CHANGELIST,
        "/admin/devices/hardwaremodel/",
        f"/admin/devices/hardwaremodel/{hardware_model.pk}/change/",
        "/admin/devices/region/",
        "/admin/devices/region/add/",
        f"/admin/devices/region/{region.pk}/change/",
        "/admin/devices/tag/",
        f"{CHANGELIST}{Device.objects.get().pk}/change/",
    ]:
        assert admin_client.get(path).status_code == 200, path


def test_admin_edits_a_region_budget_through_the_service_and_never_its_zone(admin_client, region):
    zone = region.time_zone
    response = admin_client.post(
        f"/admin/devices/region/{region.pk}/change/",
        {"name": region.name, "poll_interval_seconds": 1800, "max_checkins_per_window": 500, "time_zone": "UTC"},
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    region.refresh_from_db()
    assert (region.poll_interval_seconds, region.max_checkins_per_window, region.time_zone) == (1800, 500, zone)
    record = DecisionRecord.objects.get(actor_name="root")
    assert record.after is not None and record.before is not None
    assert record.after["poll_interval_seconds"] == 1800 and record.before["poll_interval_seconds"] is None


def test_admin_refuses_a_poll_interval_out_of_range_and_changes_nothing(admin_client, region):
    response = admin_client.post(
        f"/admin/devices/region/{region.pk}/change/", {"name": region.name, "poll_interval_seconds": 1}
    )
    assert response.status_code == 200 and "errorlist" in response.content.decode()
    region.refresh_from_db()
    assert region.poll_interval_seconds is None and not DecisionRecord.objects.exists()
