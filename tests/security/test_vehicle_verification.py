"""Adversarial suite for the vehicle's verification: each attack is refused by the agent itself, nothing is
installed, the trusted metadata is kept, and the server records a security event it can show."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from devices.firmware.director.services import DirectorAssignment, director_targets_sign
from devices.firmware.repository.models import ImageMetadata, ImageRole, ImageTarget
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment
from tests.security.conftest import HARDWARE, IMAGE, OLD_IMAGE, Vehicle
from tests.security.vehicle_support import (
    assert_nothing_installed,
    assert_refused,
    assert_server_saw_the_refusal,
    no_sleep,
    run,
    trust_once,
    untrusted_events,
)

pytestmark = pytest.mark.django_db(transaction=True)


def forged_director(vehicle: Vehicle, *, now=None, **changes: Any) -> str:
    """Director metadata signed with the real director key (a compromised director), naming what `changes` say."""
    listed = ImageTarget.objects.get(release=vehicle.deployment.release)
    target = ImageTarget(
        path=changes.pop("path", listed.path),
        sha256=changes.pop("sha256", listed.sha256),
        length=changes.pop("length", listed.length),
        release_counter=changes.pop("release_counter", listed.release_counter),
    )
    assignment = DirectorAssignment(
        deployment_id=changes.pop("deployment_id", vehicle.deployment.pk),
        device_serial=changes.pop("device_serial", vehicle.model.serial),
        hardware_id=changes.pop("hardware_id", HARDWARE),
        target=target,
    )
    assert not changes
    return director_targets_sign(assignment=assignment, now=now).content.decode()


def test_a_fully_verified_update_installs_and_succeeds(vehicle):
    agent = run(vehicle)
    assert agent.state["slots"][agent.state["active_slot"]]["version"] == "1.1.0"
    assert (vehicle.dir / f"slot_{agent.state['active_slot']}.img").read_bytes() == IMAGE
    assert Deployment.objects.get(pk=vehicle.deployment.pk).status == DeploymentStatus.SUCCEEDED
    assert any("/repository/image/metadata/" in url for url in vehicle.transport.fetched)
    assert any(url.endswith("/director/targets.json") for url in vehicle.transport.fetched)  # asked before install
    assert untrusted_events(vehicle) == 0


def test_a_director_naming_an_image_the_image_repository_does_not_list_is_refused(vehicle):
    forged = forged_director(vehicle, path="6.6.6/evil.bin")
    vehicle.transport.offer_rewrite = lambda offer: {**offer, "director": forged}
    assert_refused(vehicle, run(vehicle), "image_unlisted")


def test_a_director_entry_with_another_hash_than_the_image_repository_is_refused(vehicle):
    evil = bytes(len(IMAGE))
    import hashlib

    forged = forged_director(vehicle, sha256=hashlib.sha256(evil).hexdigest())
    vehicle.transport.offer_rewrite = lambda offer: {
        **offer,
        "director": forged,
        "artifact": {**offer["artifact"], "sha256": hashlib.sha256(evil).hexdigest()},
    }
    assert_refused(vehicle, run(vehicle), "image_mismatch")


def test_a_director_entry_for_another_hardware_id_is_refused(vehicle):
    forged = forged_director(vehicle, hardware_id="tcu-5g-r1")
    vehicle.transport.offer_rewrite = lambda offer: {**offer, "director": forged}
    assert_refused(vehicle, run(vehicle), "hardware_id")


def test_a_director_entry_for_another_devices_serial_is_refused(vehicle):
    other = Deployment.objects.exclude(pk=vehicle.deployment.pk).select_related("device").first()
    assert other is not None
    forged = forged_director(vehicle, device_serial=other.device.serial)
    vehicle.transport.offer_rewrite = lambda offer: {**offer, "director": forged}
    assert_refused(vehicle, run(vehicle), "director_serial")


def test_a_release_counter_below_the_committed_one_is_refused_by_the_vehicle_itself(vehicle):
    # The vehicle has committed counter 5; a lying link tells the server it runs counter 1, so the server offers
    # the release with counter 1: only the vehicle's own anti-rollback check stands in the way.
    def downgrade_report(body: dict[str, Any]) -> dict[str, Any]:
        slots = {name: {**slot, "release_counter": 1} for name, slot in body["slots"].items()}
        return {**body, "slots": slots}

    vehicle.transport.checkin_rewrite = downgrade_report
    assert_refused(vehicle, run(vehicle, release_counter=5), "anti_rollback")


def test_a_tampered_artifact_of_the_same_length_is_never_staged(vehicle):
    def tamper(url: str, data: bytes) -> bytes:
        return data[:100] + bytes([data[100] ^ 1]) + data[101:] if "/artifacts/" in url else data

    vehicle.transport.bytes_rewrite = tamper
    agent = vehicle.power_on()
    agent.run(max_cycles=2, sleep=no_sleep)
    failed = [r for r in vehicle.transport.reports if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failure_class"] == "untrusted", failed
    assert (
        failed[0]["detail"].startswith("untrusted: artifact: Observed hash") and "does not match" in failed[0]["detail"]
    )
    assert_nothing_installed(vehicle, agent)
    assert_server_saw_the_refusal(vehicle, "untrusted: artifact:")


def test_an_oversized_artifact_is_cut_off_and_never_staged(vehicle):
    vehicle.transport.bytes_rewrite = lambda url, data: data + b"\0" * 4096 if "/artifacts/" in url else data
    agent = vehicle.power_on()
    agent.run(max_cycles=2, sleep=no_sleep)
    failed = [r for r in vehicle.transport.reports if r["status"] == "failed"]
    assert len(failed) == 1 and failed[0]["failure_class"] == "untrusted", failed
    assert f"more than the offered {len(IMAGE)} bytes" in failed[0]["detail"]
    assert_nothing_installed(vehicle, agent)
    assert_server_saw_the_refusal(vehicle, "untrusted: artifact: more than")


def test_expired_director_metadata_is_refused_also_with_the_device_clock_set_back(vehicle):
    trusted = trust_once(vehicle)
    expired = forged_director(vehicle, now=timezone.now() - timedelta(hours=3))  # expired two hours ago
    vehicle.transport.offer_rewrite = lambda offer: {**offer, "director": expired}
    three_hours_ago = lambda: time.time() - 3 * 3600  # noqa: E731 - the device's clock, set back
    assert_refused(vehicle, run(vehicle, clock=three_hours_ago), "director_expired", director_before=trusted)


def test_expired_director_metadata_is_refused_with_a_correct_clock(vehicle):
    expired = forged_director(vehicle, now=timezone.now() - timedelta(hours=3))
    vehicle.transport.offer_rewrite = lambda offer: {**offer, "director": expired}
    assert_refused(vehicle, run(vehicle), "director_expired")


def test_an_older_director_version_is_refused(vehicle):
    trusted = trust_once(vehicle)
    older = forged_director(vehicle, now=timezone.now() - timedelta(minutes=5))  # valid, signed, but older
    vehicle.transport.offer_rewrite = lambda offer: {**offer, "director": older}
    assert_refused(vehicle, run(vehicle), "director_rollback", director_before=trusted)


def test_an_image_repository_timestamp_version_rollback_is_refused_and_the_trusted_one_kept(vehicle):
    trusted_director = trust_once(vehicle)
    trusted_timestamp = (vehicle.dir / "tuf" / "image" / "timestamp.json").read_bytes()
    first = bytes(ImageMetadata.objects.get(role=ImageRole.TIMESTAMP, version=1).content)
    assert first != trusted_timestamp
    vehicle.transport.bytes_rewrite = lambda url, data: first if url.endswith("/timestamp.json") else data
    agent = run(vehicle)
    assert_refused(vehicle, agent, "image_rollback", director_before=trusted_director)
    assert (vehicle.dir / "tuf" / "image" / "timestamp.json").read_bytes() == trusted_timestamp


def test_the_asyncio_agent_verifies_both_repositories_and_installs(vehicle, operator):
    """The fleet drill's driver: the same verification on the asyncio transport (thousands of agents per loop)."""
    import asyncio
    import random

    from devices.agent import Agent, AsyncHttpTransport
    from devices.credentials import device_credential_issue

    secret = device_credential_issue(actor=operator, device=vehicle.model)
    transport = AsyncHttpTransport(vehicle.transport.server, vehicle.model.serial, secret, timeout=10)
    events: list[str] = []
    agent = Agent(
        vehicle.dir, transport, trust=vehicle.trust, factory_image=OLD_IMAGE, hook=events.append, rng=random.Random(2)
    )

    async def no_wait(seconds: float) -> None:
        await asyncio.sleep(0)

    asyncio.run(agent.arun(max_cycles=4, sleep=no_wait))
    assert "verified" in events and events.index("verified") < events.index("downloaded")
    assert agent.state["slots"][agent.state["active_slot"]]["version"] == "1.1.0"
    assert Deployment.objects.get(pk=vehicle.deployment.pk).status == DeploymentStatus.SUCCEEDED


def test_a_targets_file_from_another_snapshot_is_refused_mix_and_match(vehicle):
    """The snapshot names the targets version that lists this release; an attacker serves an older, validly
    signed targets file under that name (mix-and-match): the vehicle refuses it and installs nothing."""
    versions = ImageMetadata.objects.filter(role=ImageRole.TARGETS).order_by("version")
    older, latest = versions.first(), versions.last()
    assert older is not None and latest is not None and older.version < latest.version
    stale = bytes(older.content)
    vehicle.transport.bytes_rewrite = lambda url, data: stale if url.endswith(".targets.json") else data
    agent = run(vehicle)
    # The snapshot pins the targets version: the older file is refused for not being the one the snapshot names.
    assert_refused(vehicle, agent, f"image_rollback: Expected targets v{latest.version}, got v{older.version}")
    assert any(url.endswith(f"/{latest.version}.targets.json") for url in vehicle.transport.fetched)
