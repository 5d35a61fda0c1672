"""Admin: releases and artifacts are listed under the firmware app and can be read, never written."""

import pytest
from django.contrib.contenttypes.models import ContentType
from django.test import Client

from devices.firmware.models import FirmwareArtifact, FirmwareRelease
from tests.factories import FirmwareReleaseFactory, HardwareModelFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client():
    client = Client()
    client.force_login(UserFactory.create(username="root", is_staff=True, is_superuser=True))
    return client


def test_release_admin_pages_render_under_the_firmware_app(admin_client):
    release = FirmwareReleaseFactory.create(hardware_models=[HardwareModelFactory.create()])
    for path in [
        "/admin/firmware/",
        "/admin/firmware/firmwarerelease/",
        f"/admin/firmware/firmwarerelease/{release.pk}/change/",
        "/admin/firmware/firmwareartifact/",
        f"/admin/firmware/firmwareartifact/{release.artifact.pk}/change/",
    ]:
        response = admin_client.get(path)
        assert response.status_code == 200, path
    assert release.version in admin_client.get("/admin/firmware/firmwarerelease/").content.decode()


def test_release_admin_refuses_edits_and_deletes(admin_client):
    release = FirmwareReleaseFactory.create(hardware_models=[HardwareModelFactory.create()], notes="as built")
    edit = admin_client.post(f"/admin/firmware/firmwarerelease/{release.pk}/change/", {"notes": "rewritten"})
    delete = admin_client.post(f"/admin/firmware/firmwarerelease/{release.pk}/delete/", {"post": "yes"})
    assert admin_client.get("/admin/firmware/firmwarerelease/add/").status_code == 403
    assert edit.status_code == 403 and delete.status_code == 403
    assert FirmwareRelease.objects.get(pk=release.pk).notes == "as built"
    assert FirmwareArtifact.objects.filter(pk=release.artifact_id).exists()


def test_release_content_types_belong_to_the_firmware_app():
    assert ContentType.objects.get_for_model(FirmwareRelease).app_label == "firmware"
    assert ContentType.objects.get_for_model(FirmwareArtifact).app_label == "firmware"
    assert not ContentType.objects.filter(app_label="rollouts", model__startswith="firmware").exists()
