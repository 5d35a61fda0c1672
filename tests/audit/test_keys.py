"""The server audit key in the PKCS#11 token: made once on first use, never read out, signatures check out, and the
pre-HSM PEM key's signatures stay verifiable by its public half."""

from __future__ import annotations

import threading
import uuid

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.db import connection
from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import AttributeSensitive

from approvals.audit import checkpoints
from approvals.audit import keys as audit_keys
from approvals.audit.checkpoints import AuditKeyTrust, checkpoint_after_verify, checkpoint_log_read
from approvals.audit.keys import (
    audit_key_id,
    audit_public_key_pem,
    audit_sign,
    audit_verify_signature,
    public_key_id,
)
from approvals.audit.records import chain_verify, record_trust_install
from ota_project.hsm.public import tuf_key_id
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import role_label, token_keys, token_session
from tests.audit.chain import append_records


@pytest.fixture
def fresh_prefix(settings) -> str:
    """A label prefix no key has yet: this test's audit key is generated on its first use."""
    settings.PKCS11_LABEL_PREFIX = f"audit-test-{uuid.uuid4().hex[:12]}"
    return settings.PKCS11_LABEL_PREFIX


@pytest.mark.django_db
def test_the_audit_key_is_generated_in_the_token_on_first_use_and_never_leaves_it(fresh_prefix):
    assert token_keys(label=role_label(KeyRole.AUDIT_CHECKPOINT)) == []

    key_id = audit_key_id()

    [key] = token_keys(label=f"{fresh_prefix}:audit-checkpoint")
    assert key.public_key_pem == audit_public_key_pem() and key_id == public_key_id(key.public_key_pem)
    assert key.key_id == tuf_key_id(key.public_key_pem)  # the token names it by its TUF key id
    with token_session() as session:
        private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, id=bytes.fromhex(key.key_id))
        with pytest.raises(AttributeSensitive):
            private[Attribute.VALUE]
    assert audit_key_id() == key_id and len(token_keys(label=key.label)) == 1  # found again, not regenerated


@pytest.mark.django_db(transaction=True)
def test_processes_that_find_no_key_at_once_agree_on_one(fresh_prefix):
    label = role_label(KeyRole.AUDIT_CHECKPOINT)
    found: list[str] = []
    start = threading.Barrier(4)

    def first_use() -> None:
        try:
            start.wait()
            found.append(audit_keys._ensure_in_token(label).key_id)  # each thread: its own database session
        finally:
            connection.close()

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(found) == 4 and len(set(found)) == 1
    assert [key.key_id for key in token_keys(label=label)] == found[:1]


@pytest.mark.django_db
def test_signature_verifies_only_for_the_same_data_and_key(settings):
    signature = audit_sign(b"manifest")
    pem = audit_public_key_pem()
    assert len(signature) == 64
    assert audit_verify_signature(pem, b"manifest", signature)
    assert not audit_verify_signature(pem, b"manifesT", signature)
    assert not audit_verify_signature(pem, b"manifest", signature[:-1] + bytes([signature[-1] ^ 1]))
    assert not audit_verify_signature("not a pem", b"manifest", signature)

    settings.PKCS11_LABEL_PREFIX = f"other-{uuid.uuid4().hex[:12]}"  # another server's audit key
    assert not audit_verify_signature(audit_public_key_pem(), b"manifest", signature)


class _PemKeyTrust(AuditKeyTrust):
    """How records were signed before the HSM: by an Ed25519 key in a PEM file."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self.key = key

    def sign(self, message: bytes) -> tuple[str, bytes]:
        return public_key_id(_pem(self.key)), self.key.sign(message)


def _pem(key: Ed25519PrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.mark.django_db
def test_records_and_checkpoints_signed_by_the_pre_hsm_pem_key_still_verify(settings, monkeypatch):
    legacy = Ed25519PrivateKey.generate()
    legacy_id = public_key_id(_pem(legacy))
    settings.AUDIT_SIGNING_KEY_PATH.write_bytes(
        legacy.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    record_trust_install(_PemKeyTrust(legacy))  # what an earlier release did: sign records and a checkpoint by file
    with monkeypatch.context() as before_the_hsm:
        before_the_hsm.setattr(checkpoints, "audit_key_id", lambda: legacy_id)
        before_the_hsm.setattr(checkpoints, "audit_sign_with_key_id", lambda data: (legacy_id, legacy.sign(data)))
        try:
            old = append_records(2)
            assert checkpoint_after_verify()[1] is not None
        finally:
            record_trust_install(AuditKeyTrust())
    append_records(1)  # the upgrade: signed in the token from now on
    verdict, checkpoint = checkpoint_after_verify()

    assert checkpoint is not None and checkpoint.key_id == audit_key_id() != legacy_id == old[0].key_id
    assert verdict.ok and chain_verify().checkpoints == 2

    # The runbook: keep the public half in the retired-keys directory, delete the private PEM file.
    settings.AUDIT_RETIRED_KEYS_DIR.mkdir(parents=True, exist_ok=True)
    (settings.AUDIT_RETIRED_KEYS_DIR / "pre-hsm.pem").write_text(_pem(legacy))
    settings.AUDIT_SIGNING_KEY_PATH.unlink()
    assert chain_verify().ok and [c.key_id for c in checkpoint_log_read().checkpoints] == [legacy_id, audit_key_id()]

    (settings.AUDIT_RETIRED_KEYS_DIR / "pre-hsm.pem").unlink()  # and with its public half lost, nothing it signed
    verdict = chain_verify()
    assert not verdict.ok and verdict.broken_seq == 1
