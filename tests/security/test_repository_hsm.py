"""The keys behind the image repository stay in the token: no private key (classical, or the AES key that wraps the
ML-DSA seeds) can be read out, a wrapped seed is useless without the token, and a wrong PIN is refused and recorded;
an independent client still verifies the repository from its root afterwards (nothing changed)."""

from __future__ import annotations

import json

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from django.core.management import CommandError, call_command
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeReadOnly, AttributeSensitive

from approvals.audit.models import SecurityEvent
from devices.firmware.keys.models import SigningKey
from devices.firmware.keys.services import key_create
from devices.firmware.repository.models import ImageMetadata
from devices.firmware.repository.services import image_repository_root, root_draft_rotation, root_sign_rotation
from ota_project.hsm.public import signature_verify
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import (
    MLDSA_APPLICATION,
    WRAPPING_KEY_ROLE,
    role_label,
    server_token,
    token_session,
    token_sign,
)
from tests.security.repository_chain import (  # noqa: F401
    chain_settings_fixture,
    new_root_key_registered,
    repository_fixture,
    vehicle,
)

pytestmark = pytest.mark.django_db


def test_no_repository_private_key_can_be_read_out_of_the_token(repository):
    with token_session() as session:
        for key in SigningKey.objects.filter(location="server_token"):
            private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(key.key_id))
            assert private[Attribute.SENSITIVE] and not private[Attribute.EXTRACTABLE]
            assert private[Attribute.NEVER_EXTRACTABLE]
            with pytest.raises(AttributeSensitive):
                private[Attribute.VALUE]
            with pytest.raises(AttributeReadOnly):
                private[Attribute.EXTRACTABLE] = True


def test_an_ml_dsa_key_is_wrapped_by_a_token_key_that_cannot_be_read_and_its_envelope_is_useless_alone(
    chain_settings, security_officer
):
    key = key_create(actor=security_officer, role=KeyRole.TIMESTAMP_ML_DSA)
    assert key.algorithm == "ml-dsa-65"
    with token_session() as session:
        wrapping = next(
            iter(session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: role_label(WRAPPING_KEY_ROLE)}))
        )  # fmt: skip
        assert wrapping[Attribute.SENSITIVE] and not wrapping[Attribute.EXTRACTABLE]
        with pytest.raises(AttributeSensitive):
            wrapping[Attribute.VALUE]
        envelope_object = next(
            iter(session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.APPLICATION: MLDSA_APPLICATION + key.key_id}))
        )  # fmt: skip
        envelope = json.loads(bytes(envelope_object[Attribute.VALUE]))
    assert set(envelope) == {"public_key_pem", "nonce", "wrapped_seed"}
    # 32-byte seed + 16-byte GCM tag: only ciphertext is stored; no AES key outside the token opens it.
    wrapped = bytes.fromhex(envelope["wrapped_seed"])
    assert len(wrapped) == 48
    with pytest.raises(InvalidTag):
        AESGCM(AESGCM.generate_key(bit_length=256)).decrypt(
            bytes.fromhex(envelope["nonce"]), wrapped, bytes.fromhex(key.key_id)
        )
    # The token unwraps it to sign, and the signature verifies under the registered public key.
    assert signature_verify(key.public_key_pem, b"payload", token_sign(key_id=key.key_id, data=b"payload"))


def test_a_wrong_pin_is_refused_recorded_and_changes_nothing(repository, security_officer, settings, tmp_path):
    new_root_key_registered(security_officer)
    signed = tmp_path / "2.root.json"
    signed.write_bytes(
        root_sign_rotation(root_draft_rotation(), trusted=image_repository_root(), token=server_token()).to_bytes()
    )
    before = ImageMetadata.objects.count()
    settings.PKCS11_PIN = "0000-wrong"
    timestamp_key = SigningKey.objects.get(role="timestamp").key_id
    with pytest.raises(CommandError, match="refused the PIN"):
        call_command("keys", "revoke", "--key-id", timestamp_key, "--replace",
                     "--actor", security_officer.username, "--reason", "drill")  # fmt: skip
    with pytest.raises(CommandError, match="refused the PIN"):  # the rotation re-signs online roles in the token
        call_command("image_repository", "rotate-root", "--actor", security_officer.username, "--root", str(signed))

    events = SecurityEvent.objects.filter(kind="hsm_pin_refused")
    assert {(event.source, event.actor_name) for event in events} == {
        ("keys", security_officer.username),
        ("image_repository", security_officer.username),
    }
    assert SigningKey.objects.get(key_id=timestamp_key).state == "active"
    assert ImageMetadata.objects.count() == before and not ImageMetadata.objects.filter(version=2, role="root")
    settings.PKCS11_PIN = ""
    with vehicle(repository, tmp_path / "vehicle") as car:
        car.updater().refresh()  # still verifies from its root alone, at root v1
        assert car.trusted_version("root") == 1
