"""The server audit key: generated once with mode 0600, reused, first writer wins, signatures check out."""

import stat

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from approvals.audit import keys as audit_keys
from approvals.audit.keys import (
    audit_key_id,
    audit_public_key_pem,
    audit_sign,
    audit_verify_signature,
    public_key_id,
)


def test_key_is_generated_on_first_use_with_mode_0600_in_a_new_directory(settings, tmp_path):
    settings.AUDIT_SIGNING_KEY_PATH = tmp_path / "keys" / "nested" / "audit.pem"
    key_id = audit_key_id()
    key_file = settings.AUDIT_SIGNING_KEY_PATH
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    loaded = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    assert isinstance(loaded, Ed25519PrivateKey)
    assert audit_key_id() == key_id == public_key_id(audit_public_key_pem())
    assert [p.name for p in key_file.parent.iterdir()] == ["audit.pem"]  # no temporary files left behind


def test_key_is_loaded_not_regenerated_when_the_file_exists(settings):
    existing = Ed25519PrivateKey.generate()
    settings.AUDIT_SIGNING_KEY_PATH.write_bytes(
        existing.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    existing_pem = existing.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert audit_public_key_pem().encode() == existing_pem


def test_a_process_losing_the_creation_race_keeps_the_winners_key(settings):
    winner_id = audit_key_id()
    winner_pem = settings.AUDIT_SIGNING_KEY_PATH.read_bytes()
    audit_keys._create_key_file(settings.AUDIT_SIGNING_KEY_PATH)  # a second process arriving late
    assert settings.AUDIT_SIGNING_KEY_PATH.read_bytes() == winner_pem
    assert audit_key_id() == winner_id
    assert [p.name for p in settings.AUDIT_SIGNING_KEY_PATH.parent.iterdir()] == ["audit_signing_key.pem"]


def test_signature_verifies_only_for_the_same_data_and_key(settings, tmp_path):
    signature = audit_sign(b"manifest")
    pem = audit_public_key_pem()
    assert len(signature) == 64
    assert audit_verify_signature(pem, b"manifest", signature)
    assert not audit_verify_signature(pem, b"manifesT", signature)
    assert not audit_verify_signature(pem, b"manifest", signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not audit_verify_signature("not a pem", b"manifest", signature)

    settings.AUDIT_SIGNING_KEY_PATH = tmp_path / "other.pem"
    assert not audit_verify_signature(audit_public_key_pem(), b"manifest", signature)
