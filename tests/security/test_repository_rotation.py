"""Root rotation and revocation of a compromised online key, seen by an independent python-tuf client: a rotation
signed by the old and new root thresholds is followed; one that skips a version or lacks the old threshold is
refused by the server (security event, nothing published) and by the client (trusted root kept)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from securesystemslib.signer import Signature
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import Metadata, Root, Timestamp

from approvals.audit.models import DecisionRecord, SecurityEvent
from devices.firmware.keys.choices import KeyState
from devices.firmware.keys.models import SigningKey
from devices.firmware.keys.services import key_revoke_and_replace, key_rotate
from devices.firmware.repository.models import ImageMetadata
from devices.firmware.repository.services import (
    _sign_with_root_keys,
    image_repository_root,
    image_repository_rotate_root,
    root_draft_rotation,
    root_sign_offline,
)
from ota_project.errors import InvalidInput
from ota_project.hsm.token import server_token, token_keys
from tests.security.repository_chain import (  # noqa: F401
    chain_settings_fixture,
    new_root_key_registered,
    publish,
    repository_fixture,
    rotate_root,
    vehicle,
)

pytestmark = pytest.mark.django_db


def _forged_events() -> int:
    return SecurityEvent.objects.filter(kind="action_forged", source="image_repository").count()


def test_a_compromised_timestamp_key_is_revoked_replaced_and_a_new_root_keeps_the_repository_serving(
    repository, security_officer, django_capture_on_commit_callbacks, tmp_path
):
    compromised = SigningKey.objects.get(role="timestamp", state="active")
    with vehicle(repository, tmp_path / "vehicle") as car:
        car.updater().refresh()
        with django_capture_on_commit_callbacks(execute=True):
            _, replacement = key_revoke_and_replace(
                actor=security_officer, key_id=compromised.key_id, reason="timestamp host compromised"
            )
        assert compromised.key_id not in {key.key_id for key in token_keys()}  # its private half is gone
        new_root_key_registered(security_officer)
        with django_capture_on_commit_callbacks(execute=True):
            rotate_root(security_officer, reason="revoke the timestamp key")

        car.updater().refresh()  # follows root v2 (old and new root keys signed it) and the re-signed metadata
        assert car.trusted_version("root") == 2
        trusted = Metadata[Timestamp].from_bytes((car.work / "metadata" / "timestamp.json").read_bytes())
        assert set(trusted.signatures) == {replacement.key_id}

        # Anything still signed by the revoked key is refused from now on.
        replay = Metadata[Timestamp].from_bytes((repository / "metadata" / "timestamp.json").read_bytes())
        replay.signed.version += 1
        replay.signatures = {compromised.key_id: Signature(compromised.key_id, "00" * 64)}
        publish(repository, "timestamp.json", replay)
        with pytest.raises(UnsignedMetadataError, match="timestamp was signed by 0/1 keys"):
            car.updater().refresh()
        assert car.trusted_version("timestamp") == trusted.signed.version

    record = DecisionRecord.objects.get(action="image_repository.rotate_root")
    assert record.before is not None and record.after is not None
    assert (record.before["root_version"], record.after["root_version"]) == (1, 2)
    assert compromised.key_id in record.after["keys_dropped"]


def _signed_rotation(*, version: int | None = None, old: bool = True) -> Metadata[Root]:
    """The next root from the registry's keys, claiming `version`, signed by the old and new root keys (what an
    insider holding both could make), or by the new root key alone (`old=False`)."""
    draft = root_draft_rotation()
    if version is not None:
        draft.signed.version = version
    if not old:
        return root_sign_offline(draft, token=server_token())  # the keys the new root names: the new key only
    trusted = image_repository_root()
    named = set(draft.signed.roles["root"].keyids) | set(trusted.signed.roles["root"].keyids)
    return _sign_with_root_keys(draft, named, server_token())


def test_a_rotation_that_skips_a_version_is_refused_recorded_and_ignored_by_clients(
    repository, security_officer, tmp_path
):
    new_root_key_registered(security_officer)
    skipping = _signed_rotation(version=3)
    before = ImageMetadata.objects.count()
    with pytest.raises(InvalidInput, match="version 3, not 2"):
        image_repository_rotate_root(actor=security_officer, root=skipping)
    assert ImageMetadata.objects.count() == before and _forged_events() == 1

    publish(repository, "3.root.json", skipping)  # put on the CDN anyway
    with vehicle(repository, tmp_path / "vehicle") as car:
        car.updater().refresh()  # looks for 2.root.json only: v3 is never considered
        assert car.trusted_version("root") == 1


def test_a_rotation_without_the_old_threshold_is_refused_recorded_and_refused_by_clients(
    repository, security_officer, tmp_path
):
    new_root_key_registered(security_officer)
    unvouched = _signed_rotation(old=False)  # signed by the new root key alone
    assert len(unvouched.signatures) == 1
    before = ImageMetadata.objects.count()
    with pytest.raises(InvalidInput, match="not signed by the threshold of the published root keys"):
        image_repository_rotate_root(actor=security_officer, root=unvouched)
    assert ImageMetadata.objects.count() == before and _forged_events() == 1

    publish(repository, "2.root.json", unvouched)
    with vehicle(repository, tmp_path / "vehicle") as car:
        with pytest.raises(UnsignedMetadataError, match="root was signed by 0/1 keys"):
            car.updater().refresh()
        assert car.trusted_version("root") == 1


def test_a_rotation_is_refused_to_anyone_but_a_security_officer(repository, security_officer, operator):
    new_root_key_registered(security_officer)
    rotation = _signed_rotation()
    with pytest.raises(Exception, match="Only security officers"):
        image_repository_rotate_root(actor=operator, root=rotation)
    assert not ImageMetadata.objects.filter(role="root", version=2).exists()


def test_the_rotate_root_command_flow_draft_sign_with_old_and_new_keys_publish(
    repository, security_officer, django_capture_on_commit_callbacks, tmp_path, monkeypatch
):
    new_root_key_registered(security_officer)
    draft, signed, trusted = tmp_path / "draft.json", tmp_path / "signed.json", tmp_path / "1.root.json"
    call_command("image_repository", "draft-root", "--rotation", "--out", str(draft))
    trusted.write_bytes((repository / "metadata" / "1.root.json").read_bytes())
    # The ceremony machine's offline token is the session token here (both root keys are on it).
    monkeypatch.setattr("devices.firmware.management.commands.image_repository.offline_token", lambda: server_token())
    call_command("image_repository", "sign-root", "--in", str(draft), "--out", str(signed), "--trusted", str(trusted))
    assert len(Metadata[Root].from_bytes(signed.read_bytes()).signatures) == 2  # old and new root key
    with django_capture_on_commit_callbacks(execute=True):
        call_command("image_repository", "rotate-root", "--actor", security_officer.username, "--root", str(signed))
    assert (repository / "metadata" / "2.root.json").read_bytes() == bytes(
        ImageMetadata.objects.get(role="root", version=2).content
    )
    assert SigningKey.objects.filter(role="root", state=KeyState.ACTIVE).count() == 1
    with vehicle(repository, tmp_path / "vehicle") as car:
        car.updater().refresh()
        assert car.trusted_version("root") == 2


def test_a_planned_rotation_keeps_serving_until_the_new_root_which_then_destroys_every_retired_private_half(
    repository, security_officer, django_capture_on_commit_callbacks, tmp_path
):
    first = SigningKey.objects.get(role="snapshot", state="active")
    with django_capture_on_commit_callbacks(execute=True):
        second = key_rotate(actor=security_officer, role="snapshot", reason="yearly")
        third = key_rotate(actor=security_officer, role="snapshot", reason="yearly, again")  # second never in a root
    in_token = {key.key_id for key in token_keys()}
    assert {first.key_id, second.key_id, third.key_id} <= in_token  # nothing lost before the new root
    with vehicle(repository, tmp_path / "vehicle") as car:
        car.updater().refresh()
        with django_capture_on_commit_callbacks(execute=True):
            rotate_root(security_officer, reason="snapshot key rotation")
        car.updater().refresh()
        assert car.trusted_version("root") == 2
    in_token = {key.key_id for key in token_keys()}
    assert third.key_id in in_token and not {first.key_id, second.key_id} & in_token
    record = DecisionRecord.objects.get(action="image_repository.rotate_root")
    assert record.after is not None and set(record.after["retired_keys_destroyed"]) == {first.key_id, second.key_id}
