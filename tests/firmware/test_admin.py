"""Admin: releases, artifacts and signing keys are listed under the firmware app and can be read, never written."""

import pytest
from django.contrib.contenttypes.models import ContentType
from django.test import Client
from django.utils import timezone

from devices.firmware.models import FirmwareArtifact, FirmwareRelease, SigningKey
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


def test_signing_keys_are_listed_in_the_admin_and_cannot_be_written_there(admin_client):
    officer = UserFactory.create(username="sofia")
    key = SigningKey.objects.create(
        role="snapshot",
        key_id="c" * 64,
        algorithm="ed25519",
        public_key_pem="-----BEGIN PUBLIC KEY-----",
        location="server_token",
        created_by=officer,
        created_at=timezone.now(),
    )
    assert key.key_id in admin_client.get("/admin/firmware/signingkey/").content.decode()
    assert admin_client.get(f"/admin/firmware/signingkey/{key.pk}/change/").status_code == 200
    assert admin_client.get("/admin/firmware/signingkey/add/").status_code == 403
    retire = admin_client.post(f"/admin/firmware/signingkey/{key.pk}/change/", {"state": "retired"})
    delete = admin_client.post(f"/admin/firmware/signingkey/{key.pk}/delete/", {"post": "yes"})
    assert retire.status_code == 403 and delete.status_code == 403
    assert SigningKey.objects.get(pk=key.pk).state == "active"
