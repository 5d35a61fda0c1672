"""Hybrid post-quantum mode: every role of the image repository needs its classical keys AND its ML-DSA-65 key
(threshold = all of them), so metadata with only the classical or only the ML-DSA signature is refused by python-tuf's
ngclient; a release for a hybrid hardware model is never signed into a classical repository."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth.models import User
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Timestamp

from approvals.audit.models import SecurityEvent
from devices.agent.tuf_limits import CLASSICAL_LIMITS, HYBRID_SCHEME
from devices.firmware.keys.services import key_create, key_import_public
from devices.firmware.repository.models import ImageMetadata, ImageTarget
from devices.firmware.repository.services import root_is_hybrid
from devices.firmware.signing import release_sign
from ota_project.errors import Conflict
from ota_project.hsm.public import KeyAlgorithm
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import role_label, token_key_generate
from tests.firmware.repository_support import release_bytes, repository_start
from tests.security.repository_chain import (  # noqa: F401
    chain_settings_fixture,
    new_root_key_registered,
    publish,
    repository_fixture,
    rotate_root,
    vehicle,
)

pytestmark = pytest.mark.django_db
IMAGE = b"tcu firmware 1.1.0, hybrid\n" * 200


def _ml_dsa_keys(officer: User) -> dict[str, str]:
    """The post-quantum keys: root's on the session token (standing in for the offline token), the rest online."""
    root = token_key_generate(label=role_label(KeyRole.ROOT_ML_DSA), algorithm=KeyAlgorithm.ML_DSA_65)
    key_import_public(actor=officer, role=KeyRole.ROOT_ML_DSA, public_key=root.public_key_pem)
    keys: dict[str, str] = {KeyRole.ROOT_ML_DSA: root.key_id}
    for role in (KeyRole.TARGETS_ML_DSA, KeyRole.SNAPSHOT_ML_DSA, KeyRole.TIMESTAMP_ML_DSA):
        keys[role] = key_create(actor=officer, role=role).key_id
    return keys


@pytest.fixture
def hybrid_repository(chain_settings, fleet, security_officer, django_capture_on_commit_callbacks):
    fleet["model"].__class__.objects.filter(pk=fleet["model"].pk).update(signing_scheme=HYBRID_SCHEME)
    keys = _ml_dsa_keys(security_officer)
    with django_capture_on_commit_callbacks(execute=True):
        repository_start(security_officer)
    return chain_settings.IMAGE_REPOSITORY_DIR, keys


@pytest.fixture
def stored_release(fleet):
    """The fleet's 1.1.0 with a real image on disk, set before its change is approved (approvals bind the hash)."""
    release_bytes(fleet["new"], IMAGE)
    return fleet["new"]


def _strip(repository, keep) -> int:
    """Publish the served timestamp, keeping only the signatures `keep(keyid)` selects."""
    timestamp = Metadata[Timestamp].from_bytes((repository / "metadata" / "timestamp.json").read_bytes())
    document = json.loads(timestamp.to_bytes())
    document["signatures"] = [signature for signature in document["signatures"] if keep(signature["keyid"])]
    publish(repository, "timestamp.json", json.dumps(document).encode())
    return len(document["signatures"])


def test_every_role_of_a_hybrid_root_needs_its_classical_and_its_ml_dsa_keys(hybrid_repository):
    repository, keys = hybrid_repository
    root = Metadata[Root].from_bytes((repository / "metadata" / "1.root.json").read_bytes()).signed
    assert root_is_hybrid(root)
    for role, ml_dsa_role in (
        ("root", KeyRole.ROOT_ML_DSA),
        ("targets", KeyRole.TARGETS_ML_DSA),
        ("snapshot", KeyRole.SNAPSHOT_ML_DSA),
        ("timestamp", KeyRole.TIMESTAMP_ML_DSA),
    ):
        keyids = root.roles[role].keyids
        assert keys[ml_dsa_role] in keyids and root.keys[keys[ml_dsa_role]].scheme == "ml-dsa-65/1"
        classical = [keyid for keyid in keyids if root.keys[keyid].keytype != "ml-dsa"]
        # Neither the classical keys alone nor the ML-DSA key alone reach the threshold.
        assert root.roles[role].threshold == len(keyids) > max(len(classical), 1)


def test_a_hybrid_release_is_verified_and_downloaded_by_a_client_with_the_hybrid_limits(
    hybrid_repository, stored_release, approved_change, operator, django_capture_on_commit_callbacks, tmp_path
):
    repository, keys = hybrid_repository
    with django_capture_on_commit_callbacks(execute=True):
        target = release_sign(actor=operator, change=approved_change)
    timestamp = Metadata[Timestamp].from_bytes((repository / "metadata" / "timestamp.json").read_bytes())
    assert keys[KeyRole.TIMESTAMP_ML_DSA] in timestamp.signatures and len(timestamp.signatures) == 2
    with vehicle(repository, tmp_path / "vehicle", scheme=HYBRID_SCHEME) as car:
        updater = car.updater()
        updater.refresh()
        info = updater.get_targetinfo(target.path)
        assert info is not None and open(updater.download_target(info), "rb").read() == IMAGE
    largest = max(len(bytes(row.content)) for row in ImageMetadata.objects.filter(role="timestamp"))
    assert largest > 6618  # an ML-DSA-65 signature alone is 6,618 hex characters
    assert largest < CLASSICAL_LIMITS.timestamp_max_length * 4


@pytest.mark.parametrize("kept", ["classical", "ml-dsa"])
def test_hybrid_metadata_with_only_one_kind_of_signature_is_refused(hybrid_repository, kept, tmp_path):
    repository, keys = hybrid_repository
    ml_dsa = keys[KeyRole.TIMESTAMP_ML_DSA]
    with vehicle(repository, tmp_path / "vehicle", scheme=HYBRID_SCHEME) as car:
        car.updater().refresh()
        trusted = (car.work / "metadata" / "timestamp.json").read_bytes()
        remaining = _strip(repository, (lambda keyid: keyid != ml_dsa) if kept == "classical" else ml_dsa.__eq__)
        assert remaining == 1
        (car.work / "metadata" / "timestamp.json").unlink()  # a vehicle that has not seen this version yet
        with pytest.raises(UnsignedMetadataError, match="timestamp was signed by 1/2 keys"):
            car.updater().refresh()
        assert not (car.work / "metadata" / "timestamp.json").exists()  # nothing trusted from the stripped copy
    assert trusted  # the first refresh had trusted the full, doubly signed one


def test_a_classical_repository_refuses_a_release_for_a_hybrid_model_and_records_it(
    repository, fleet, stored_release, approved_change, operator
):
    fleet["model"].__class__.objects.filter(pk=fleet["model"].pk).update(signing_scheme=HYBRID_SCHEME)
    before = ImageMetadata.objects.count()
    with pytest.raises(Conflict, match="need hybrid signatures"):
        release_sign(actor=operator, change=approved_change)
    assert ImageMetadata.objects.count() == before and not ImageTarget.objects.exists()
    assert SecurityEvent.objects.filter(kind="release_sign_refused", source="image_repository").count() == 1


def test_a_classical_repository_becomes_hybrid_by_a_root_rotation_that_clients_follow(
    repository, fleet, security_officer, django_capture_on_commit_callbacks, tmp_path
):
    _ml_dsa_keys(security_officer)
    fleet["model"].__class__.objects.filter(pk=fleet["model"].pk).update(signing_scheme=HYBRID_SCHEME)
    with vehicle(repository, tmp_path / "vehicle", scheme=HYBRID_SCHEME) as car:
        car.updater().refresh()
        with django_capture_on_commit_callbacks(execute=True):
            rotate_root(security_officer, reason="hybrid mode")
        car.updater().refresh()
        assert car.trusted_version("root") == 2
    root = Metadata[Root].from_bytes((repository / "metadata" / "2.root.json").read_bytes())
    assert root_is_hybrid(root.signed) and len(root.signatures) == 2  # the old classical root key and the ML-DSA one
