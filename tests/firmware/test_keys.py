"""The signing-key registry and `manage.py keys`: one key per role, no key for two roles, every change recorded."""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.management import CommandError, call_command
from django.db import IntegrityError, transaction
from django.utils import timezone

from approvals.audit.keys import audit_public_key_pem
from approvals.audit.models import DecisionRecord, SecurityEvent
from approvals.audit.records import record_signing_message
from devices.firmware.keys.choices import KeyLocation, KeyState
from devices.firmware.keys.models import SigningKey
from devices.firmware.keys.services import role_sign
from ota_project.errors import Conflict
from ota_project.hsm.public import signature_verify
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.softhsm import softhsm_setup
from ota_project.hsm.token import role_label, token_keys, token_sign
from ota_project.roles import Role

pytestmark = pytest.mark.django_db
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _own_labels(settings) -> None:
    """Role labels of this test only, so keys of other tests in the session token are not in the way."""
    settings.PKCS11_LABEL_PREFIX = f"keys-test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def officer(make_user):
    return make_user(Role.SECURITY_OFFICER, username="sofia")


def keys(*args: str) -> str:
    out = io.StringIO()
    call_command("keys", *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_creating_a_role_key_puts_it_in_the_token_registers_its_public_half_and_records_it(officer):
    out = keys("create", "--role", "snapshot", "--actor", "sofia", "--reason", "bootstrap")

    key = SigningKey.objects.get(role=KeyRole.SNAPSHOT)
    assert f"created snapshot key {key.key_id}" in out
    assert (key.state, key.location, key.algorithm, key.created_by) == ("active", "server_token", "ed25519", officer)
    [in_token] = token_keys(label=role_label(KeyRole.SNAPSHOT))
    assert in_token.key_id == key.key_id and in_token.public_key_pem == key.public_key_pem
    assert signature_verify(key.public_key_pem, b"m", token_sign(key_id=key.key_id, data=b"m"))
    record = DecisionRecord.objects.get(action="key.create")
    assert (record.actor, record.object_id, record.reason) == (officer, key.key_id, "bootstrap")
    assert record.after == {"role": "snapshot", "key_id": key.key_id, "algorithm": "ed25519", "state": "active"}
    assert "snapshot" in keys("list") and key.key_id in keys("list")


def test_a_second_active_key_for_a_role_is_refused_and_changes_nothing(officer):
    keys("create", "--role", "timestamp", "--actor", "sofia", "--algorithm", "ecdsa-p256")
    records = DecisionRecord.objects.count()

    with pytest.raises(CommandError, match="Role timestamp already has an active key"):
        keys("create", "--role", "timestamp", "--actor", "sofia")

    assert SigningKey.objects.filter(role="timestamp").count() == 1
    assert len(token_keys(label=role_label(KeyRole.TIMESTAMP))) == 1
    assert DecisionRecord.objects.count() == records


def test_the_database_holds_one_active_key_per_role_and_each_key_for_one_role_only(officer):
    key = SigningKey.objects.create(
        role="director",
        key_id="a" * 64,
        algorithm="ed25519",
        public_key_pem="x",
        location="offline",
        created_by=officer,
        created_at=timezone.now(),
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        SigningKey.objects.create(
            role="director",
            key_id="b" * 64,
            algorithm="ed25519",
            public_key_pem="y",
            location="offline",
            created_by=officer,
            created_at=timezone.now(),
        )
    with pytest.raises(IntegrityError), transaction.atomic():
        SigningKey.objects.create(
            role="snapshot",
            key_id=key.key_id,
            algorithm="ed25519",
            public_key_pem="x",
            location="offline",
            created_by=officer,
            created_at=timezone.now(),
        )


def test_one_key_is_refused_for_a_second_role(officer, tmp_path):
    keys("create", "--role", "targets-release", "--actor", "sofia")
    pem = tmp_path / "release.pem"
    pem.write_text(SigningKey.objects.get(role="targets-release").public_key_pem)

    with pytest.raises(
        CommandError, match=r"already registered for role targets-release \(active\); a key serves one role"
    ):
        keys("import-public", "--role", "targets-security-officer", "--public-key", str(pem), "--actor", "sofia")

    assert not SigningKey.objects.filter(role="targets-security-officer").exists()


def test_unknown_roles_unknown_keys_and_unknown_people_get_clear_errors(officer):
    with pytest.raises(CommandError, match=r"Unknown key role 'rooot'.*role: Choose one of: root,"):
        keys("create", "--role", "rooot", "--actor", "sofia")
    with pytest.raises(CommandError, match="No registered key 'feed'"):
        keys("revoke", "--key-id", "feed", "--actor", "sofia", "--reason", "lost")
    with pytest.raises(CommandError, match=r"Unknown algorithm 'rsa-2048'.*One of: ed25519, ecdsa-p256"):
        keys("create", "--role", "snapshot", "--actor", "sofia", "--algorithm", "rsa-2048")
    with pytest.raises(CommandError, match="no active user named 'mallory'"):
        keys("create", "--role", "snapshot", "--actor", "mallory")
    assert not SigningKey.objects.exists() and not DecisionRecord.objects.filter(action__startswith="key.").exists()


def test_only_security_officers_manage_keys_and_a_refusal_is_a_security_event(make_user):
    make_user(Role.OPERATOR, username="otto")

    with pytest.raises(CommandError, match="Only security officers may manage signing keys"):
        keys("create", "--role", "snapshot", "--actor", "otto")

    event = SecurityEvent.objects.get()
    assert (event.kind, event.source, event.actor_name, event.subject) == (
        "action_unauthorised",
        "keys",
        "otto",
        "key.create",
    )
    assert not SigningKey.objects.exists() and token_keys(label=role_label(KeyRole.SNAPSHOT)) == []


def test_a_wrong_pin_is_refused_and_recorded_as_a_security_event(officer, settings):
    settings.PKCS11_PIN = "0000-wrong"

    with pytest.raises(CommandError, match="refused the PIN"):
        keys("create", "--role", "snapshot", "--actor", "sofia")

    event = SecurityEvent.objects.get()
    assert (event.kind, event.actor_name) == ("hsm_pin_refused", "sofia")
    assert not SigningKey.objects.exists()


def test_rotating_retires_the_old_key_destroys_its_private_half_and_records_both(
    officer, django_capture_on_commit_callbacks
):
    keys("create", "--role", "director", "--actor", "sofia")
    old = SigningKey.objects.get(role="director")

    with django_capture_on_commit_callbacks(execute=True):
        keys("rotate", "--role", "director", "--actor", "sofia", "--reason", "yearly")

    old.refresh_from_db()
    new = SigningKey.objects.get(role="director", state=KeyState.ACTIVE)
    assert (old.state, old.retired_by) == (KeyState.RETIRED, officer) and old.retired_at is not None
    assert new.key_id != old.key_id
    assert [key.key_id for key in token_keys(label=role_label(KeyRole.DIRECTOR))] == [new.key_id]
    record = DecisionRecord.objects.get(action="key.rotate")
    assert record.before is not None and record.after is not None
    assert record.before == {"role": "director", "key_id": old.key_id, "algorithm": "ed25519", "state": "active"}
    assert record.after["key_id"] == new.key_id and record.reason == "yearly"


def test_revoking_a_key_records_who_when_and_why_and_it_cannot_be_revoked_twice(
    officer, django_capture_on_commit_callbacks
):
    keys("create", "--role", "timestamp", "--actor", "sofia")
    key = SigningKey.objects.get(role="timestamp")

    with pytest.raises(CommandError, match="A reason is required"):
        keys("revoke", "--key-id", key.key_id, "--actor", "sofia")
    with django_capture_on_commit_callbacks(execute=True):
        keys("revoke", "--key-id", key.key_id, "--actor", "sofia", "--reason", "host compromised")

    key.refresh_from_db()
    assert (key.state, key.revoked_by, key.revoke_reason) == ("revoked", officer, "host compromised")
    assert token_keys(label=role_label(KeyRole.TIMESTAMP)) == []
    assert DecisionRecord.objects.get(action="key.revoke").reason == "host compromised"
    with pytest.raises(CommandError, match="is revoked; it cannot become revoked"):
        keys("revoke", "--key-id", key.key_id, "--actor", "sofia", "--reason", "again")
    keys("create", "--role", "timestamp", "--actor", "sofia")  # the role can have a key again
    assert SigningKey.objects.get(role="timestamp", state="active").key_id != key.key_id


def test_the_audit_key_is_registered_as_the_one_that_signs_and_is_rotated_not_revoked(officer):
    keys("create", "--role", "audit-checkpoint", "--actor", "sofia")
    key = SigningKey.objects.get(role="audit-checkpoint")
    record = DecisionRecord.objects.get(action="key.create")

    # The registered key is the one that signs the decision record, its own creation's record included.
    assert key.public_key_pem == audit_public_key_pem()
    assert record.signature is not None
    assert signature_verify(key.public_key_pem, record_signing_message(record.hash), base64.b64decode(record.signature))
    with pytest.raises(CommandError, match="audit-checkpoint key is not revoked: rotate it"):
        keys("revoke", "--key-id", key.key_id, "--actor", "sofia", "--reason", "x")
    with pytest.raises(CommandError, match="Must be ed25519 for audit-checkpoint"):
        keys("create", "--role", "audit-checkpoint", "--actor", "sofia", "--algorithm", "ecdsa-p256")


def test_offline_roles_are_never_generated_on_the_server_token(officer):
    with pytest.raises(CommandError, match="root is an offline role"):
        keys("create", "--role", "root", "--actor", "sofia")
    with pytest.raises(CommandError, match="no offline token"):
        keys("create", "--role", "root", "--offline")
    assert token_keys(label=role_label(KeyRole.ROOT)) == [] and not SigningKey.objects.exists()


def test_the_root_key_ceremony_offline_token_then_import_public(officer, tmp_path, settings):
    offline = softhsm_setup(tmp_path / "offline", "ceremony")  # another SOFTHSM2_CONF: a token the server never sees
    public_key = tmp_path / "root.pub.pem"
    env = {
        **os.environ,
        "SOFTHSM2_CONF": str(offline.conf),
        "OTA_PKCS11_OFFLINE_TOKEN": "ceremony",
        "OTA_PKCS11_OFFLINE_PIN": offline.pin_file.read_text().strip(),
        "OTA_PKCS11_LABEL_PREFIX": settings.PKCS11_LABEL_PREFIX,
    }
    ceremony = subprocess.run(
        [sys.executable, "manage.py", "keys", "create", "--role", "root", "--offline", "--out", str(public_key)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ceremony.returncode == 0, ceremony.stderr

    keys("import-public", "--role", "root", "--public-key", str(public_key), "--actor", "sofia", "--reason", "ceremony")

    root = SigningKey.objects.get(role="root")
    assert (root.location, root.token_label, root.state) == (KeyLocation.OFFLINE, "", "active")
    assert root.key_id in ceremony.stderr
    assert token_keys(label=role_label(KeyRole.ROOT)) == []  # nothing of it on the server's token
    assert DecisionRecord.objects.get(action="key.import_public").object_id == root.key_id


def test_a_role_signs_with_its_active_key_and_only_while_it_has_one_on_the_server(officer, tmp_path):
    with pytest.raises(Conflict, match="Role timestamp has no active key"):
        role_sign(role="timestamp", data=b"timestamp.json")
    keys("create", "--role", "timestamp", "--actor", "sofia", "--algorithm", "ecdsa-p256")

    key, signature = role_sign(role="timestamp", data=b"timestamp.json")

    assert key == SigningKey.objects.get(role="timestamp", state="active")
    assert signature_verify(key.public_key_pem, b"timestamp.json", signature)
    offline_public = tmp_path / "director-root.pem"
    offline_public.write_text(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    keys("import-public", "--role", "director-root", "--public-key", str(offline_public), "--actor", "sofia")
    with pytest.raises(Conflict, match="on an offline token; it signs only in a key ceremony"):
        role_sign(role="director-root", data=b"root.json")
