"""The key registry in hybrid mode and revocation with replacement: ML-DSA-65 keys serve the *-ml-dsa roles only,
classical keys never serve them, `keys revoke --replace` revokes and replaces in one step (online roles only), and
the development rotation makes a hybrid root that an independent client follows."""

from __future__ import annotations

import io
import uuid

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSA65PrivateKey
from django.core.management import CommandError, call_command
from tuf.api.metadata import Metadata, Root

from approvals.audit.models import DecisionRecord
from devices.agent.tuf_limits import HYBRID_SCHEME
from devices.firmware.keys.models import SigningKey
from devices.firmware.keys.services import key_create, key_import_public, key_revoke_and_replace
from devices.firmware.repository.models import ImageMetadata
from devices.firmware.repository.services import root_is_hybrid
from ota_project.errors import InvalidInput
from ota_project.hsm.public import public_key_pem
from tests.factories import HardwareModelFactory
from tests.firmware.repository_support import client, served

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _own_labels(settings, tmp_path) -> None:
    settings.PKCS11_LABEL_PREFIX = f"hybrid-keys-{uuid.uuid4().hex[:12]}"
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository"


def test_ml_dsa_roles_take_ml_dsa_keys_only_and_classical_roles_never_do(security_officer):
    assert key_create(actor=security_officer, role="snapshot-ml-dsa").algorithm == "ml-dsa-65"  # the role's default
    with pytest.raises(InvalidInput, match="post-quantum role"):
        key_create(actor=security_officer, role="timestamp-ml-dsa", algorithm="ed25519")
    with pytest.raises(InvalidInput, match="classical role"):
        key_create(actor=security_officer, role="timestamp", algorithm="ml-dsa-65")
    ml_dsa_public = public_key_pem(MLDSA65PrivateKey.generate().public_key())
    with pytest.raises(InvalidInput, match="classical role"):
        key_import_public(actor=security_officer, role="root", public_key=ml_dsa_public)
    ed25519_public = public_key_pem(Ed25519PrivateKey.generate().public_key())
    with pytest.raises(InvalidInput, match="post-quantum role"):
        key_import_public(actor=security_officer, role="root-ml-dsa", public_key=ed25519_public)
    assert key_import_public(actor=security_officer, role="root-ml-dsa", public_key=ml_dsa_public).location == "offline"
    with pytest.raises(InvalidInput, match="offline role"):
        key_create(actor=security_officer, role="root-ml-dsa")
    assert SigningKey.objects.count() == 2


def test_revoke_and_replace_is_one_step_for_online_roles_and_refused_for_offline_ones(security_officer):
    old = key_create(actor=security_officer, role="timestamp")
    out = io.StringIO()
    call_command("keys", "revoke", "--key-id", old.key_id, "--replace", "--actor", security_officer.username,
                 "--reason", "host compromised", stdout=out)  # fmt: skip
    old.refresh_from_db()
    new = SigningKey.objects.get(role="timestamp", state="active")
    assert old.state == "revoked" and new.key_id != old.key_id and "rotate-root" in out.getvalue()
    assert DecisionRecord.objects.filter(action__in=["key.revoke", "key.create"]).count() == 3

    root = key_import_public(
        actor=security_officer, role="root", public_key=public_key_pem(Ed25519PrivateKey.generate().public_key())
    )
    with pytest.raises(InvalidInput, match="offline role"):
        key_revoke_and_replace(actor=security_officer, key_id=root.key_id, reason="lost token")
    root.refresh_from_db()
    assert root.state == "active"  # nothing changed: the refusal rolled the revocation back
    with pytest.raises(CommandError, match="reason is required"):
        call_command("keys", "revoke", "--key-id", new.key_id, "--replace", "--actor", security_officer.username)


def test_the_development_rotation_turns_a_classical_repository_hybrid_and_a_client_follows(
    security_officer, settings, tmp_path, django_capture_on_commit_callbacks
):
    settings.DATA_DIR = tmp_path / "data"
    with django_capture_on_commit_callbacks(execute=True):
        call_command("image_repository", "dev-ceremony", "--actor", security_officer.username, stdout=io.StringIO())
    HardwareModelFactory.create(name="tcu-sat-r1", signing_scheme=HYBRID_SCHEME)
    with django_capture_on_commit_callbacks(execute=True):
        call_command("image_repository", "dev-rotate-root", "--actor", security_officer.username, stdout=io.StringIO())

    root = Metadata[Root].from_bytes(bytes(ImageMetadata.objects.get(role="root", version=2).content))
    assert root_is_hybrid(root.signed) and len(root.signatures) == 2  # old root key + new ML-DSA root key
    assert SigningKey.objects.get(role="root-ml-dsa").location == "offline"
    metadata = settings.IMAGE_REPOSITORY_DIR / "metadata"
    with served(settings.IMAGE_REPOSITORY_DIR) as url:
        updater = client(url, tmp_path / "vehicle", (metadata / "1.root.json").read_bytes())
        updater.refresh()
    assert Metadata[Root].from_bytes((tmp_path / "vehicle" / "metadata" / "root.json").read_bytes()).signed.version == 2
