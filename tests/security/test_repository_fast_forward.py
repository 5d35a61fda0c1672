"""Fast-forward attack recovery (python-tuf's documented procedure): whoever holds the timestamp key publishes a
timestamp with a huge version; clients trust it and then refuse every honest timestamp as a rollback. Rotating the
timestamp key in a new root makes clients drop the fast-forwarded timestamp (it no longer verifies), so they take
the repository's real one again."""

from __future__ import annotations

import pytest
from tuf.api.exceptions import BadVersionNumberError
from tuf.api.metadata import Metadata, Timestamp

from devices.firmware.keys.models import SigningKey
from devices.firmware.keys.services import key_revoke_and_replace
from devices.firmware.repository.files import image_files_write
from devices.firmware.repository.models import ImageMetadata
from devices.firmware.repository.services import image_repository_refresh
from devices.firmware.repository.signers import role_signer
from tests.security.repository_chain import (  # noqa: F401
    chain_settings_fixture,
    new_root_key_registered,
    publish,
    repository_fixture,
    rotate_root,
    vehicle,
)

pytestmark = pytest.mark.django_db


def test_clients_recover_from_a_fast_forwarded_timestamp_once_the_timestamp_key_is_rotated_in_a_new_root(
    repository, security_officer, django_capture_on_commit_callbacks, tmp_path, settings
):
    compromised = SigningKey.objects.get(role="timestamp", state="active")
    with vehicle(repository, tmp_path / "vehicle") as car:
        car.updater().refresh()
        # The attacker signs with the (stolen) timestamp key: version 999 naming the current snapshot.
        forged = Metadata[Timestamp].from_bytes((repository / "metadata" / "timestamp.json").read_bytes())
        forged.signed.version = 999
        forged.signatures.clear()
        forged.sign(role_signer("timestamp"))
        publish(repository, "timestamp.json", forged)
        car.updater().refresh()
        assert car.trusted_version("timestamp") == 999  # fast-forwarded

        # The repository's honest timestamp is now refused as a rollback.
        settings.IMAGE_REPOSITORY_EXPIRY_DAYS = {**settings.IMAGE_REPOSITORY_EXPIRY_DAYS, "timestamp": 30}
        with django_capture_on_commit_callbacks(execute=True):
            assert image_repository_refresh() == ["timestamp"]
        with pytest.raises(BadVersionNumberError, match="must be >= 999"):
            car.updater().refresh()
        assert car.trusted_version("timestamp") == 999

        # Recovery: revoke and replace the timestamp key, sign a root naming the new one (old + new root keys).
        with django_capture_on_commit_callbacks(execute=True):
            _, replacement = key_revoke_and_replace(
                actor=security_officer, key_id=compromised.key_id, reason="fast-forward attack"
            )
        new_root_key_registered(security_officer)
        with django_capture_on_commit_callbacks(execute=True):
            rotate_root(security_officer, reason="fast-forward recovery")
        honest = ImageMetadata.objects.filter(role="timestamp").latest("version")
        assert honest.version < 999

        car.updater().refresh()
        assert car.trusted_version("root") == 2
        assert car.trusted_version("timestamp") == honest.version  # the fast-forwarded 999 was dropped
        trusted = Metadata[Timestamp].from_bytes((car.work / "metadata" / "timestamp.json").read_bytes())
        assert set(trusted.signatures) == {replacement.key_id}

    # A fresh vehicle that was never fooled reaches the same state from 1.root.json alone.
    image_files_write()
    with vehicle(repository, tmp_path / "fresh") as fresh:
        fresh.updater().refresh()
        assert (fresh.trusted_version("root"), fresh.trusted_version("timestamp")) == (2, honest.version)
