"""Forged and stale image repository metadata, refused by an independent python-tuf client that keeps what it
trusted: a signature by an unknown key, a threshold met twice by one key, expired metadata."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone
from securesystemslib.signer import CryptoSigner
from tuf.api.exceptions import ExpiredMetadataError, UnsignedMetadataError
from tuf.api.metadata import Metadata, Targets, Timestamp
from tuf.api.serialization import DeserializationError

from approvals.audit.models import AuditFinding
from devices.firmware.repository.expiry import expiry_audit
from devices.firmware.repository.models import ImageMetadata
from devices.firmware.repository.signers import role_signer
from ota_project.hsm.roles import KeyRole
from tests.security.repository_chain import chain_settings_fixture, publish, repository_fixture, vehicle  # noqa: F401

pytestmark = pytest.mark.django_db


def _served_timestamp(repository) -> Metadata[Timestamp]:
    return Metadata[Timestamp].from_bytes((repository / "metadata" / "timestamp.json").read_bytes())


def test_metadata_signed_by_an_unknown_key_is_refused_and_the_trusted_timestamp_kept(repository, tmp_path):
    with vehicle(repository, tmp_path / "vehicle") as car:
        car.updater().refresh()
        assert car.trusted_version("timestamp") == 1
        forged = _served_timestamp(repository)
        forged.signed.version = 2
        forged.signatures.clear()
        forged.sign(CryptoSigner.generate_ed25519())  # a key the root does not name
        publish(repository, "timestamp.json", forged)

        with pytest.raises(UnsignedMetadataError, match="timestamp was signed by 0/1 keys"):
            car.updater().refresh()
        assert car.trusted_version("timestamp") == 1


def test_a_threshold_met_twice_by_one_key_is_refused(repository, tmp_path):
    # targets needs 2 distinct keys; the release key's signature given twice must not count as two.
    targets = Metadata[Targets].from_bytes((repository / "metadata" / "1.targets.json").read_bytes())
    keyid, signature = next(iter(targets.signatures.items()))
    document = json.loads(targets.to_bytes())
    document["signatures"] = [signature.to_dict(), signature.to_dict()]
    publish(repository, "1.targets.json", json.dumps(document).encode())

    with vehicle(repository, tmp_path / "vehicle") as car, pytest.raises(DeserializationError) as refused:
        car.updater().refresh()
    assert "Multiple signatures found for keyid" in str(refused.value.__cause__)
    assert not (car.work / "metadata" / "targets.json").exists()  # nothing of the forged targets trusted

    # The same signature under a second key id of the role is not valid for that key either.
    other = next(keyid_ for keyid_ in json.loads((repository / "metadata" / "1.root.json").read_bytes())["signed"][
        "roles"]["targets"]["keyids"] if keyid_ != keyid)  # fmt: skip
    document["signatures"] = [signature.to_dict(), {"keyid": other, "sig": signature.signature}]
    publish(repository, "1.targets.json", json.dumps(document).encode())
    with vehicle(repository, tmp_path / "vehicle-2") as car, pytest.raises(UnsignedMetadataError, match="1/2"):
        car.updater().refresh()


def test_expired_metadata_is_refused_the_trusted_kept_and_the_expiry_audit_flags_it(repository, tmp_path):
    with vehicle(repository, tmp_path / "vehicle") as car:
        car.updater().refresh()
        # Correctly signed by the real timestamp key, but already expired (a replayed or stale copy).
        stale = _served_timestamp(repository)
        stale.signed.version = 2
        stale.signed.expires = (timezone.now() - timedelta(hours=1)).replace(microsecond=0)
        stale.signatures.clear()
        stale.sign(role_signer(KeyRole.TIMESTAMP))
        publish(repository, "timestamp.json", stale)

        with pytest.raises(ExpiredMetadataError, match="timestamp.json is expired"):
            car.updater().refresh()
        assert car.trusted_version("timestamp") == 1

    # Server side: stored metadata past its expiry is a critical alert of the expiry audit.
    later = ImageMetadata.objects.get(role="timestamp").expires + timedelta(minutes=1)
    findings = expiry_audit(now=later)
    assert ("image_metadata", "timestamp", "expired", "critical") in {
        (f.subject_type, f.subject, f.code, f.severity) for f in findings
    }
    assert (
        AuditFinding.objects.filter(
            kind="signing_expiry", subject="timestamp", code="expired", resolved_at__isnull=True
        ).count()
        == 1
    )
