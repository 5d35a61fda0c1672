"""The image repository and the approval-gated signing step, checked by an independent python-tuf client."""

from __future__ import annotations

import io
import json
import shutil
import uuid
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command
from django.utils import timezone
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Targets
from tuf.api.serialization import DeserializationError

from approvals.audit.models import DecisionRecord, SecurityEvent
from devices.firmware.keys.choices import KeyLocation
from devices.firmware.keys.models import SigningKey
from devices.firmware.keys.services import key_create, key_import_public, key_revoke, key_rotate
from devices.firmware.repository.models import ImageMetadata, ImageTarget
from devices.firmware.repository.services import (
    image_repository_init,
    image_repository_refresh,
    root_draft,
    root_sign_offline,
)
from devices.firmware.signing import release_sign
from devices.firmware.storage import artifact_path
from ota_project.errors import Conflict, InvalidInput, NotPermitted
from ota_project.hsm.public import KeyAlgorithm, public_key_pem
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import role_label, server_token, token_key_generate, token_keys
from rollouts.models import Rollout
from rollouts.rollout_services.start import rollout_start
from tests.firmware.repository_support import ONLINE_ROLES, client, release_bytes, repository_start, served

pytestmark = pytest.mark.django_db
IMAGE = b"tcu firmware 1.1.0\n" * 300


@pytest.fixture(autouse=True)
def _own_labels_and_directory(settings, tmp_path) -> None:
    """Role labels of this test only (keys of other tests stay in the session token), and its own served tree."""
    settings.PKCS11_LABEL_PREFIX = f"repo-test-{uuid.uuid4().hex[:12]}"
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository"


@pytest.fixture
def repository(security_officer, django_capture_on_commit_callbacks, settings):
    with django_capture_on_commit_callbacks(execute=True):
        repository_start(security_officer)
    return settings.IMAGE_REPOSITORY_DIR


@pytest.fixture
def stored_release(fleet):
    """The fleet's 1.1.0 with a real image on disk, set before the change is approved; its rollback release 1.0.0
    has real bytes too (the signing step signs it with the change)."""
    release_bytes(fleet["old"], b"tcu firmware 1.0.0\n" * 300)
    release_bytes(fleet["new"], IMAGE)
    return fleet["new"]


def _published() -> tuple[int, int, int]:
    return ImageMetadata.objects.count(), ImageTarget.objects.count(), DecisionRecord.objects.count()


def _refusal_events() -> int:
    return SecurityEvent.objects.filter(kind="release_sign_refused").count()


def test_a_third_party_client_verifies_the_repository_from_root_alone_and_downloads_a_signed_release(
    repository, stored_release, approved_change, operator, django_capture_on_commit_callbacks, tmp_path
):
    with django_capture_on_commit_callbacks(execute=True):
        target = release_sign(actor=operator, change=approved_change)

    assert (target.path, target.release_counter, target.hardware_ids) == ("1.1.0/tcu-1.1.0.bin", 1, ["tcu-4g-r2"])
    signed = DecisionRecord.objects.get(action="release.sign").after
    assert signed is not None and (signed["sha256"], signed["change"]) == (target.sha256, approved_change.pk)
    root = (repository / "metadata" / "1.root.json").read_bytes()
    with served(repository) as url:
        updater = client(url, tmp_path / "vehicle", root)
        updater.refresh()
        info = updater.get_targetinfo("1.1.0/tcu-1.1.0.bin")
        assert info is not None
        assert info.custom == {"hardware_ids": ["tcu-4g-r2"], "release_counter": 1}
        downloaded = updater.download_target(info)
    assert open(downloaded, "rb").read() == IMAGE
    # Consistent snapshots: versioned metadata, hash-prefixed target files.
    assert (repository / "metadata" / "2.targets.json").exists()
    assert (repository / "targets" / "1.1.0" / f"{target.sha256}.tcu-1.1.0.bin").exists()
    # Signing again (the rollout start is retried) changes nothing.
    before = _published()
    release_sign(actor=operator, change=approved_change)
    assert _published() == before


def test_a_release_whose_change_is_not_approved_is_refused_recorded_and_not_published(
    repository, stored_release, submitted_change, operator
):
    before = _published()
    with pytest.raises(Conflict, match="not approved"):
        release_sign(actor=operator, change=submitted_change)
    assert _published() == before and _refusal_events() == 1


def test_a_change_approved_for_another_hash_is_refused(repository, fleet, approved_change, operator):
    # Approved while the release pointed at another image; the release row now names a different one.
    release_bytes(fleet["new"], IMAGE)
    before = _published()
    with pytest.raises(Conflict, match="no longer satisfy the policy"):
        release_sign(actor=operator, change=approved_change)
    assert _published() == before and _refusal_events() == 1


def test_an_artifact_changed_after_approval_is_refused(repository, stored_release, approved_change, operator):
    path = artifact_path(stored_release.artifact.sha256)
    path.write_bytes(IMAGE.replace(b"1.1.0", b"6.6.6"))  # same length, other bytes
    before = _published()
    with pytest.raises(Conflict, match="changed after approval"):
        release_sign(actor=operator, change=approved_change)
    assert _published() == before and _refusal_events() == 1
    assert not (repository / "targets").exists()


def test_targets_signed_by_only_one_of_its_two_keys_is_rejected_by_the_client(
    repository, stored_release, approved_change, operator, django_capture_on_commit_callbacks, tmp_path
):
    with django_capture_on_commit_callbacks(execute=True):
        release_sign(actor=operator, change=approved_change)
    targets_file = repository / "metadata" / "2.targets.json"
    targets = Metadata[Targets].from_bytes(targets_file.read_bytes())
    assert len(targets.signatures) == 2
    targets.signatures.popitem()  # only the release key's (or only the security officer's) signature left
    targets_file.write_bytes(targets.to_bytes())
    root = (repository / "metadata" / "1.root.json").read_bytes()
    with served(repository) as url:
        updater = client(url, tmp_path / "vehicle", root)
        with pytest.raises(UnsignedMetadataError, match="targets was signed by 1/2 keys"):
            updater.refresh()


def test_targets_signed_twice_by_one_key_does_not_meet_the_threshold(repository, tmp_path):
    targets_file = repository / "metadata" / "1.targets.json"
    targets = Metadata[Targets].from_bytes(targets_file.read_bytes())
    keyid, signature = next(iter(targets.signatures.items()))
    document = json.loads(targets.to_bytes())
    document["signatures"] = [signature.to_dict(), signature.to_dict()]
    targets_file.write_bytes(json.dumps(document).encode())
    root = (repository / "metadata" / "1.root.json").read_bytes()
    with served(repository) as url, pytest.raises(DeserializationError) as refused:
        client(url, tmp_path / "vehicle", root).refresh()
    assert "Multiple signatures found for keyid" in str(refused.value.__cause__)


def test_a_root_not_signed_by_the_registered_root_key_is_refused(security_officer):
    registered = Ed25519PrivateKey.generate().public_key()
    key_import_public(actor=security_officer, role="root", public_key=public_key_pem(registered))
    impostor = CryptoSigner.generate_ed25519()
    for role in ONLINE_ROLES:
        key_create(actor=security_officer, role=role)
    root = root_draft()
    root.sign(impostor, append=True)
    with pytest.raises(InvalidInput, match="not signed by the root key"):
        image_repository_init(actor=security_officer, root=root)
    assert not ImageMetadata.objects.exists()
    assert SecurityEvent.objects.filter(kind="action_forged", source="image_repository").count() == 1


def test_only_a_security_officer_starts_the_repository(operator):
    with pytest.raises(NotPermitted):
        image_repository_init(actor=operator, root=Metadata(Root()))
    assert not ImageMetadata.objects.exists()
    assert SecurityEvent.objects.filter(kind="action_unauthorised", source="image_repository").count() == 1


def test_a_refresh_writes_a_lost_static_tree_again_from_the_database(repository, django_capture_on_commit_callbacks):
    shutil.rmtree(repository)
    with django_capture_on_commit_callbacks(execute=True):
        assert image_repository_refresh() == []
    assert (repository / "metadata" / "timestamp.json").read_bytes() == bytes(
        ImageMetadata.objects.get(role="timestamp").content
    )
    assert (repository / "metadata" / "1.root.json").exists() and (repository / "metadata" / "1.targets.json").exists()


def test_refresh_resigns_timestamp_and_snapshot_only_near_expiry(repository):
    assert image_repository_refresh() == []
    versions = dict(ImageMetadata.objects.filter(version__gt=0).values_list("role", "version").order_by("version"))
    later = timezone.now() + timedelta(hours=13)  # timestamp (1 day) has less than half its life left
    assert image_repository_refresh(now=later) == ["timestamp"]
    much_later = timezone.now() + timedelta(days=4)  # snapshot (7 days) too
    assert image_repository_refresh(now=much_later) == ["snapshot", "timestamp"]
    newest = dict(ImageMetadata.objects.values_list("role", "version").order_by("version"))
    assert (newest["snapshot"], newest["timestamp"]) == (versions["snapshot"] + 1, versions["timestamp"] + 2)
    assert newest["targets"] == versions["targets"]
    assert DecisionRecord.objects.filter(action="image_repository.refresh").count() == 2
    # Targets (3 months) too, as a new version listing the same targets, signed again by both of its keys.
    assert image_repository_refresh(now=timezone.now() + timedelta(days=46)) == ["targets", "snapshot", "timestamp"]
    targets = ImageMetadata.objects.filter(role="targets").order_by("-version").first()
    assert targets is not None and targets.version == versions["targets"] + 1
    assert len(Metadata[Targets].from_bytes(bytes(targets.content)).signatures) == 2


def test_a_rollout_start_signs_the_approved_release_before_any_device_is_offered(
    repository, stored_release, approved_change, operator, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=True):
        rollout = rollout_start(actor=operator, change=approved_change, start_workflow=False)

    assert ImageTarget.objects.get(release=stored_release).targets_version == 2
    # The rollback release was approved with the change: the same targets version lists it.
    assert ImageTarget.objects.get(release=approved_change.rollback_release).targets_version == 2
    signed = DecisionRecord.objects.get(action="release.sign")
    started = DecisionRecord.objects.get(action="rollout.start", object_id=str(rollout.pk))
    assert signed.seq < started.seq


def test_a_rollout_whose_artifact_changed_after_approval_does_not_start(
    repository, stored_release, approved_change, operator
):
    artifact_path(stored_release.artifact.sha256).write_bytes(b"x" * len(IMAGE))
    before = _published()
    with pytest.raises(Conflict, match="changed after approval"):
        rollout_start(actor=operator, change=approved_change, start_workflow=False)
    assert not Rollout.objects.exists() and _published() == before and _refusal_events() == 1


def test_the_development_ceremony_makes_root_on_its_own_token_and_a_client_trusts_it(
    security_officer, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.DATA_DIR = tmp_path / "data"
    with django_capture_on_commit_callbacks(execute=True):
        call_command("image_repository", "dev-ceremony", "--actor", security_officer.username, stdout=io.StringIO())

    root_key = SigningKey.objects.get(role="root")
    assert root_key.location == KeyLocation.OFFLINE
    assert token_keys(label=role_label(KeyRole.ROOT)) == []  # the root key is not on the server's token
    assert (tmp_path / "data" / "softhsm-offline-dev" / "softhsm2.conf").exists()
    root_file = settings.IMAGE_REPOSITORY_DIR / "metadata" / "1.root.json"
    with served(settings.IMAGE_REPOSITORY_DIR) as url:
        client(url, tmp_path / "vehicle", root_file.read_bytes()).refresh()
    with pytest.raises(CommandError, match="already has a root"):
        call_command("image_repository", "init", "--actor", security_officer.username, "--root", str(root_file))


def test_the_ceremony_by_hand_draft_on_the_server_sign_offline_init_with_the_signed_root(
    security_officer, tmp_path, django_capture_on_commit_callbacks, settings
):
    root_key = token_key_generate(label=role_label(KeyRole.ROOT), algorithm=KeyAlgorithm.ED25519)
    key_import_public(actor=security_officer, role="root", public_key=root_key.public_key_pem)
    for role in ONLINE_ROLES:
        key_create(actor=security_officer, role=role)
    draft, signed = tmp_path / "root.draft.json", tmp_path / "root.json"
    call_command("image_repository", "draft-root", "--out", str(draft), stdout=io.StringIO())
    assert Metadata[Root].from_bytes(draft.read_bytes()).signatures == {}
    with pytest.raises(CommandError, match="not signed by the root key"):
        call_command("image_repository", "init", "--actor", security_officer.username, "--root", str(draft))
    # What sign-root does on the ceremony machine, with the session token standing in for the offline one.
    signed.write_bytes(
        root_sign_offline(Metadata[Root].from_bytes(draft.read_bytes()), token=server_token()).to_bytes()
    )
    with django_capture_on_commit_callbacks(execute=True):
        call_command("image_repository", "init", "--actor", security_officer.username, "--root", str(signed))
    published = (settings.IMAGE_REPOSITORY_DIR / "metadata" / "1.root.json").read_bytes()
    assert Metadata[Root].from_bytes(published) == Metadata[Root].from_bytes(signed.read_bytes())


def test_after_a_planned_rotation_the_repository_keeps_signing_with_the_key_the_root_names(
    repository, security_officer
):
    old = SigningKey.objects.get(role="timestamp", state="active")
    new = key_rotate(actor=security_officer, role="timestamp", reason="rotated before the new root")
    assert image_repository_refresh(now=timezone.now() + timedelta(hours=13)) == ["timestamp"]
    timestamp = Metadata.from_bytes(bytes(ImageMetadata.objects.filter(role="timestamp").latest("version").content))
    assert set(timestamp.signatures) == {old.key_id} and new.key_id not in timestamp.signatures
    assert old.key_id in {key.key_id for key in token_keys()}  # kept until a root no longer names it


def test_an_online_key_the_root_does_not_name_signs_nothing(repository, security_officer):
    old = SigningKey.objects.get(role="timestamp", state="active")
    key_revoke(actor=security_officer, key_id=old.key_id, reason="compromised")
    key_create(actor=security_officer, role="timestamp")
    before = _published()
    with pytest.raises(Conflict, match="names no timestamp key this server can sign with"):
        image_repository_refresh(now=timezone.now() + timedelta(hours=13))
    assert _published() == before
