"""The director: its root (ceremony rules), per-device targets signed once per offer and reused, withdrawn on halt;
the rollback release signed with the change; the image repository served to vehicles."""

from __future__ import annotations

import json
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone
from rest_framework.test import APIClient
from tuf.api.metadata import Metadata, Root, Targets

from approvals.audit.models import SecurityEvent
from devices.credentials import device_credential_issue
from devices.firmware.director.models import DirectorRoot
from devices.firmware.director.services import director_init, director_root_draft, director_root_sign_offline
from devices.firmware.keys.services import key_create, key_import_public
from devices.firmware.repository.models import ImageTarget
from ota_project.errors import InvalidInput
from ota_project.hsm.public import KeyAlgorithm
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import role_label, server_token, token_key_generate
from rollouts import rollout_services as steps
from rollouts.choices import DeploymentStatus
from rollouts.director import deployment_director_targets
from rollouts.models import Deployment, Rollout
from tests.security.conftest import HARDWARE

pytestmark = pytest.mark.django_db(transaction=True)  # on-commit publishing of the static tree


@pytest.fixture(autouse=True)
def _epochs_at_once(settings):
    """These tests ask what a change does to the very next check-in: the epochs are re-read on every check-in
    answered from memory (devices.edge.quiet; the 1 s bound is tests/device_api/test_offer_resend.py's)."""
    settings.OTA_CHECKIN_EPOCH_SECONDS = 0


def _device_client(operator, device) -> APIClient:
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Device {device.serial}:{device_credential_issue(actor=operator, device=device)}"
    )
    return client


def _pilot_deployment() -> Deployment:
    deployment = Deployment.objects.select_related("device").order_by("pk").first()
    assert deployment is not None  # the pilot wave is assigned
    return deployment


def _checkin(client: APIClient) -> dict:
    body = {"slots": {"a": {"version": "1.0.0", "release_counter": 1}}, "active_slot": "a", "boot_count": 0}
    answer = client.post("/device/v1/checkin/", body, format="json")
    assert answer.status_code == 200, answer.content
    return answer.json()


def test_a_director_root_not_signed_by_the_registered_key_is_refused_and_recorded(security_officer):
    real = token_key_generate(label=role_label(KeyRole.DIRECTOR_ROOT), algorithm=KeyAlgorithm.ED25519)
    key_import_public(actor=security_officer, role=KeyRole.DIRECTOR_ROOT, public_key=real.public_key_pem)
    key_create(actor=security_officer, role=KeyRole.DIRECTOR)
    draft = director_root_draft()
    unsigned = Metadata[Root].from_bytes(draft.to_bytes())  # never signed in a ceremony
    with pytest.raises(InvalidInput, match="not signed by the director root key"):
        director_init(actor=security_officer, root=unsigned)
    assert not DirectorRoot.objects.exists()
    assert SecurityEvent.objects.filter(kind="action_forged", source="director").count() == 1
    # The real one is accepted, once.
    stored = director_init(actor=security_officer, root=director_root_sign_offline(draft, token=server_token()))
    assert stored.version == 1 and set(draft.signed.roles["targets"].keyids)


def test_an_offer_carries_director_targets_for_exactly_this_device_signed_once_and_reused(running, operator):
    deployment = _pilot_deployment()
    client = _device_client(operator, deployment.device)
    first = _checkin(client)["offer"]
    assert first["deployment_id"] == deployment.pk
    metadata = Metadata[Targets].from_bytes(first["director"].encode())
    root = Metadata[Root].from_bytes(bytes(DirectorRoot.objects.get(version=1).content))
    root.verify_delegate("targets", metadata)  # signed by the key the director root names
    listed = ImageTarget.objects.get(release=deployment.release)
    ((path, target),) = metadata.signed.targets.items()
    custom = target.unrecognized_fields["custom"]
    assert (path, target.length, target.hashes) == (listed.path, listed.length, {"sha256": listed.sha256})
    assert custom["device_serial"] == deployment.device.serial and custom["hardware_id"] == HARDWARE
    assert custom["deployment_id"] == deployment.pk and custom["release_counter"] == listed.release_counter
    assert len(custom["nonce"]) == 32
    assert metadata.signed.expires - timezone.now() <= timedelta(hours=1)
    # The re-sent offer carries the same bytes: signed once per offer, kept on the deployment row.
    assert _checkin(client)["offer"]["director"] == first["director"]
    # Near expiry (less than half of its lifetime left) it is signed again, with a higher version.
    Deployment.objects.filter(pk=deployment.pk).update(director_expires=timezone.now() + timedelta(minutes=10))
    renewed = _checkin(client)["offer"]["director"]
    assert Metadata[Targets].from_bytes(renewed.encode()).signed.version > metadata.signed.version


def test_director_metadata_is_withdrawn_when_the_rollout_halts(running, operator):
    deployment = _pilot_deployment()
    client = _device_client(operator, deployment.device)
    offered = _checkin(client)["offer"]["director"]
    served = client.get("/device/v1/director/targets.json")
    assert served.status_code == 200 and served.content.decode() == offered
    steps.rollout_halt(rollout_id=running.pk, wave_index=0, reason="pilot failed")
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.CANCELLED
    withdrawn = client.get("/device/v1/director/targets.json")
    assert withdrawn.status_code == 404 and withdrawn.json()["error"]["code"] == "director_withdrawn"
    assert _checkin(client)["offer"] is None


def test_director_metadata_is_withdrawn_when_the_window_closes_before_the_download_started(running, operator):
    deployment = _pilot_deployment()
    client = _device_client(operator, deployment.device)
    hour = timezone.now().astimezone(ZoneInfo(deployment.device.region.time_zone)).hour
    open_now = {"days": list(range(7)), "start": f"{(hour - 1) % 24:02d}:00", "end": f"{(hour + 2) % 24:02d}:00"}
    closed_now = {"days": list(range(7)), "start": f"{(hour + 3) % 24:02d}:00", "end": f"{(hour + 4) % 24:02d}:00"}
    Rollout.objects.filter(pk=running.pk).update(plan={**running.plan, "maintenance_windows": {"*": [open_now]}})
    assert _checkin(client)["offer"]["director"]
    assert client.get("/device/v1/director/targets.json").status_code == 200
    Rollout.objects.filter(pk=running.pk).update(plan={**running.plan, "maintenance_windows": {"*": [closed_now]}})
    assert _checkin(client)["offer"] is None
    assert Deployment.objects.get(pk=deployment.pk).status == DeploymentStatus.PENDING
    withdrawn = client.get("/device/v1/director/targets.json")
    assert withdrawn.status_code == 404 and withdrawn.json()["error"]["code"] == "director_withdrawn"


def test_the_rollback_release_is_signed_with_the_change_at_rollout_start(running, fleet):
    listed = {target.release_id: target for target in ImageTarget.objects.all()}
    assert set(listed) == {fleet["new"].pk, fleet["old"].pk}
    assert listed[fleet["old"].pk].change_id == running.change_id


def test_the_rollout_does_not_start_when_the_rollback_release_bytes_changed(chain, approved_change, operator, fleet):
    from devices.firmware.storage import artifact_path

    artifact_path(fleet["old"].artifact.sha256).write_bytes(b"y" * fleet["old"].artifact.size_bytes)
    with pytest.raises(Exception, match="changed after approval"):
        steps.rollout_start(actor=operator, change=approved_change)
    assert not ImageTarget.objects.exists()


def test_the_image_repository_is_served_as_static_files_and_nothing_outside_it(chain, settings, tmp_path):
    client = APIClient()
    root = client.get("/repository/image/metadata/1.root.json")
    assert root.status_code == 200
    assert json.loads(root.getvalue())["signed"]["_type"] == "root"
    (tmp_path / "secret.txt").write_text("not for devices")
    for path in ("../secret.txt", "metadata/../../secret.txt", "metadata/%2e%2e/%2e%2e/secret.txt", "metadata/"):
        assert client.get(f"/repository/image/{path}").status_code == 404


def test_a_device_without_a_deployment_is_told_director_withdrawn(chain, fleet, operator):
    from devices.models import Device

    client = _device_client(operator, Device.objects.first())
    answer = client.get("/device/v1/director/targets.json")
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "director_withdrawn"
    assert client.get("/device/v1/director/1.root.json").status_code == 200
    assert client.get("/device/v1/director/2.root.json").status_code == 404
    assert APIClient().get("/device/v1/director/targets.json").status_code == 401


def test_without_a_director_offers_carry_none(running, operator):
    DirectorRoot.objects.all().delete()
    deployment = _pilot_deployment()
    assert deployment_director_targets(deployment=deployment) is None


def test_a_concurrent_offer_that_stored_newer_metadata_first_wins(running, operator):
    deployment = _pilot_deployment()
    stale = Deployment.objects.get(pk=deployment.pk)  # read before the other request stored its metadata
    first = deployment_director_targets(deployment=Deployment.objects.get(pk=deployment.pk))
    assert first is not None
    # The stale copy has no metadata: it signs its own, but the row already holds another request's; that one is
    # what both answers carry, so the device never sees two versions out of order.
    assert deployment_director_targets(deployment=stale) == first
    stored = Deployment.objects.get(pk=deployment.pk).director_targets
    assert stored is not None and bytes(stored) == first
