"""The image repository attacked between the server and the vehicle, refused by the vehicle's own agent (not only by
a third party's client, tests/security/test_repository_signatures.py): a timestamp signed by a key the root does not
name, a targets threshold met twice by one key, expired metadata replayed while the device's clock is set back, and
an image download that never ends or declares a huge length, answered over real sockets by a man in the middle.

Each case: the agent's failure report names the check, nothing is installed or staged, the trusted metadata stays
what it was, the deployment ends failed/untrusted on the server and a security event names it."""

from __future__ import annotations

import json
import time
from datetime import timedelta

import pytest
from django.utils import timezone
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Timestamp

from devices.credentials import device_credential_issue
from devices.firmware.repository.models import ImageMetadata, ImageRole
from devices.firmware.repository.signers import role_signer
from ota_project.hsm.roles import KeyRole
from tests.security.conftest import IMAGE, AttackerTransport, Vehicle
from tests.security.vehicle_support import (
    EndlessArtifact,
    assert_nothing_installed,
    assert_refused,
    assert_server_saw_the_refusal,
    endless_artifact_proxy,
    run,
    trust_once,
)

pytestmark = pytest.mark.django_db(transaction=True)


def _latest(role: str) -> ImageMetadata:
    return ImageMetadata.objects.filter(role=role).latest("version")


def _timestamp(*, version: int, expires=None, signer=None) -> bytes:
    """The repository's current timestamp re-issued as `version` (and `expires`), signed by `signer` only."""
    timestamp = Metadata[Timestamp].from_bytes(bytes(_latest(ImageRole.TIMESTAMP).content))
    timestamp.signed.version = version
    if expires is not None:
        timestamp.signed.expires = expires
    timestamp.signatures.clear()
    timestamp.sign(signer)
    return timestamp.to_bytes()


def _trusted(vehicle: Vehicle, role: str) -> bytes | None:
    path = vehicle.dir / "tuf" / "image" / f"{role}.json"
    return path.read_bytes() if path.exists() else None


def test_a_timestamp_signed_by_a_key_the_root_does_not_name_is_refused_and_the_trusted_one_kept(vehicle):
    director = trust_once(vehicle)
    trusted = _trusted(vehicle, "timestamp")
    current = _latest(ImageRole.TIMESTAMP).version
    forged = _timestamp(version=current + 1, signer=CryptoSigner.generate_ed25519())
    vehicle.transport.bytes_rewrite = lambda url, data: forged if url.endswith("/timestamp.json") else data
    agent = run(vehicle)
    assert_refused(vehicle, agent, "image_metadata: UnsignedMetadataError", director_before=director)
    assert _trusted(vehicle, "timestamp") == trusted


@pytest.mark.parametrize(
    ("under_the_other_key_id", "check"),
    [
        (False, "image_metadata: DeserializationError"),  # the same key id twice
        (True, "image_metadata: UnsignedMetadataError"),  # the same signature under the role's other key id
    ],
    ids=["same-key-id-twice", "copied-to-the-other-key-id"],
)
def test_a_targets_threshold_met_twice_by_one_key_is_refused_by_the_vehicle(vehicle, under_the_other_key_id, check):
    # The targets role needs the release key and the security officer's key; one key's signature must not count
    # as two.
    latest = _latest(ImageRole.TARGETS)
    document = json.loads(bytes(latest.content))
    role = json.loads(bytes(_latest(ImageRole.ROOT).content))["signed"]["roles"]["targets"]
    assert role["threshold"] == 2
    first = document["signatures"][0]
    other = next(keyid for keyid in role["keyids"] if keyid != first["keyid"])
    second = {"keyid": other, "sig": first["sig"]} if under_the_other_key_id else first
    forged = json.dumps({**document, "signatures": [first, second]}).encode()
    vehicle.transport.bytes_rewrite = lambda url, data: (
        forged if url.endswith(f"/{latest.version}.targets.json") else data
    )
    agent = run(vehicle)
    assert_refused(vehicle, agent, check)
    assert _trusted(vehicle, "targets") is None  # nothing of the forged targets was trusted


def test_expired_image_metadata_replayed_is_refused_also_with_the_device_clock_set_back(vehicle):
    director = trust_once(vehicle)  # the vehicle trusts now: its persisted trusted time is now
    trusted = _trusted(vehicle, "timestamp")
    current = _latest(ImageRole.TIMESTAMP).version
    # Signed by the real timestamp key, but expired an hour ago (a stale copy from a mirror or a replay).
    stale = _timestamp(
        version=current + 1,
        expires=(timezone.now() - timedelta(hours=1)).replace(microsecond=0),
        signer=role_signer(KeyRole.TIMESTAMP),
    )
    vehicle.transport.bytes_rewrite = lambda url, data: stale if url.endswith("/timestamp.json") else data
    three_hours_ago = lambda: time.time() - 3 * 3600  # noqa: E731 - the device's clock, set back before the expiry
    agent = run(vehicle, clock=three_hours_ago)
    assert_refused(vehicle, agent, "image_expired", director_before=director)
    assert _trusted(vehicle, "timestamp") == trusted
    assert agent.state["trusted_time"] > time.time() - 600  # the set-back clock did not move the trusted time back


@pytest.mark.parametrize(
    "declared_length",
    [None, 1 << 40],  # no Content-Length: bytes that never end; a terabyte declared: refused before the body is read
    ids=["endless", "declared-oversized"],
)
def test_an_endless_or_oversized_download_is_cut_off_and_never_staged(vehicle, live_server, operator, declared_length):
    artifact = EndlessArtifact(declared_length=declared_length)
    with endless_artifact_proxy(live_server.url, artifact) as proxy:
        secret = device_credential_issue(actor=operator, device=vehicle.model)
        vehicle.transport = AttackerTransport(proxy, vehicle.model.serial, secret, timeout=10)
        agent = run(vehicle)
    assert artifact.answered >= 1
    # The agent hung up: the man in the middle never got near its cap (what it wrote is what the sockets' buffers
    # took before the close, a few MiB; the agent itself kept at most the offered length, checked below).
    assert artifact.sent < 64 * 1024 * 1024 < artifact.cap
    failed = [r for r in vehicle.transport.reports if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failure_class"] == "untrusted", failed
    assert failed[0]["detail"].startswith("untrusted: artifact: answer_too_large:")
    assert str(len(IMAGE)) in failed[0]["detail"]
    assert_nothing_installed(vehicle, agent)
    partial = agent.store.partial_path
    assert not partial.exists() or partial.stat().st_size <= len(IMAGE)  # never more than the offered length on disk
    assert_server_saw_the_refusal(vehicle, "answer_too_large")
