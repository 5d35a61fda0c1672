"""Attestation over mutual TLS through the real nginx: the check-in answer carries a fresh nonce, an offer needs
evidence over it signed with the device certificate's key, and a replayed nonce, forged measurements or a signature
by another key get no offer, quarantine the device and record a security event; the agent attests on its own."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import SecurityEvent
from devices.agent import Agent
from devices.agent.aio import AsyncHttpTransport
from devices.choices import DeviceStatus
from devices.models import Device
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment
from tests.device_api.conftest import checkin_body
from tests.security.attestation_support import CHECKIN, FACTORY_IMAGE, attested_checkin, evidence

pytestmark = [pytest.mark.django_db(transaction=True)]


def _deployment(device: Device) -> Deployment:
    found = Deployment.objects.filter(device=device).order_by("-pk").first()
    assert found is not None
    return found


def _attestation_events() -> list[SecurityEvent]:
    return list(SecurityEvent.objects.filter(kind=SecurityEventKind.DEVICE_ATTESTATION_FAILED))


def _nonce(transport: Any) -> str:
    answer = transport.post_json(CHECKIN, checkin_body())
    assert answer["offer"] is None and answer["attestation_required"] is True  # work waits for evidence
    return str(answer["attestation_nonce"])


def _refused(transport: Any, device: Device, body: dict[str, Any], *, offered_before: bool) -> None:
    """The check-in is answered without an offer, the device is quarantined and the event recorded."""
    answer = transport.post_json(CHECKIN, body)
    assert answer["offer"] is None
    assert answer["attestation_nonce"]  # a fresh one all the same (the device is not told why)
    device.refresh_from_db()
    assert device.status == DeviceStatus.QUARANTINED
    assert device.status_reason.startswith("Attestation failed:")
    (event,) = _attestation_events()
    assert event.device_serial == device.serial
    # The quarantine withdrew the device's deployment (never offered when the evidence came with the first offer).
    deployment = _deployment(device)
    assert deployment.status == DeploymentStatus.CANCELLED
    assert offered_before or deployment.attempts == 0
    # And the device stays without offers: even valid evidence now changes nothing until a person releases it.
    fresh = transport.post_json(CHECKIN, checkin_body())["attestation_nonce"]
    later = transport.post_json(CHECKIN, {**checkin_body(), "attestation": evidence(transport.tls.key, fresh)})
    assert later["offer"] is None


def test_an_offer_needs_evidence_over_a_fresh_nonce(edge, pilot, sha):
    transport = edge.transport(pilot)
    nonce = _nonce(transport)
    assert _deployment(pilot).status == DeploymentStatus.PENDING  # withheld: not even marked offered
    answer = transport.post_json(CHECKIN, {**checkin_body(), "attestation": evidence(transport.tls.key, nonce)})
    assert answer["offer"]["artifact"]["sha256"] == sha
    assert answer["attestation_nonce"] != nonce
    pilot.refresh_from_db()
    assert pilot.status == DeviceStatus.ACTIVE and pilot.attested_nonce_us is not None
    assert not SecurityEvent.objects.exists()


def test_a_replayed_attestation_nonce_is_refused_quarantines_and_is_recorded(edge, pilot):
    transport = edge.transport(pilot)
    signed = {**checkin_body(), "attestation": evidence(transport.tls.key, _nonce(transport))}
    assert transport.post_json(CHECKIN, signed)["offer"] is not None  # first use: fine
    pilot.refresh_from_db()
    consumed = pilot.attested_nonce_us
    _refused(transport, pilot, signed, offered_before=True)  # the very same evidence again
    pilot.refresh_from_db()
    assert pilot.attested_nonce_us is not None and pilot.attested_nonce_us >= consumed
    assert "used before" in _attestation_events()[0].message


@pytest.mark.parametrize("forgery", ["lineage", "booted"])
def test_forged_measurements_are_refused_quarantine_and_are_recorded(edge, pilot, forgery):
    transport = edge.transport(pilot)
    nonce = _nonce(transport)
    never_delivered = hashlib.sha256(b"an image this server never delivered").hexdigest()
    if forgery == "lineage":  # claims to have installed an image the server never gave it
        forged = evidence(transport.tls.key, nonce, lineage=[FACTORY_IMAGE, never_delivered])
    else:  # boots something other than its committed image or one delivered to it
        forged = evidence(transport.tls.key, nonce, booted=never_delivered)
    _refused(transport, pilot, {**checkin_body(), "attestation": forged}, offered_before=False)
    assert "never" in _attestation_events()[0].message or "neither" in _attestation_events()[0].message


def test_evidence_signed_with_another_key_is_refused_quarantines_and_is_recorded(edge, pilot, tmp_path):
    transport = edge.transport(pilot)
    nonce = _nonce(transport)
    other = tmp_path / "other-key.pem"
    other.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    _refused(transport, pilot, {**checkin_body(), "attestation": evidence(other, nonce)}, offered_before=False)
    assert "not signed by the key" in _attestation_events()[0].message


def test_a_nonce_issued_to_another_device_is_refused(edge, pilot, other_pilot):
    theirs = edge.transport(other_pilot)
    nonce = _nonce(theirs)
    mine = edge.transport(pilot)
    # Signed with the pilot's own key, but over the other device's nonce.
    _refused(mine, pilot, {**checkin_body(), "attestation": evidence(mine.tls.key, nonce)}, offered_before=False)
    other_pilot.refresh_from_db()
    assert other_pilot.status == DeviceStatus.ACTIVE


def test_malformed_evidence_is_a_400_naming_the_field_and_changes_nothing(edge, pilot):
    status, body = edge.raw(
        pilot,
        "POST",
        CHECKIN,
        {"Content-Type": "application/json"},
        b'{"slots": {"a": {"version": "1.0.0", "release_counter": 1}}, "active_slot": "a", "boot_count": 1, '
        b'"attestation": {"nonce": "x", "measurements": {}, "lineage": ["nothex"], "signature": "AA=="}}',
    )
    assert status == 400 and b"attestation" in body
    pilot.refresh_from_db()
    assert pilot.status == DeviceStatus.ACTIVE and pilot.attested_nonce_us is None
    assert _deployment(pilot).status == DeploymentStatus.PENDING


def test_the_agent_attests_by_itself_and_gets_its_offer_in_one_cycle(edge, pilot, sha, tmp_path):
    events: list[str] = []
    agent = Agent(tmp_path / "agent", edge.transport(pilot), hook=events.append)
    agent.step()
    assert "downloading" in events  # offered and accepted in the first cycle (it checked in twice)
    assert _deployment(pilot).status != DeploymentStatus.PENDING
    pilot.refresh_from_db()
    assert pilot.status == DeviceStatus.ACTIVE and pilot.attested_nonce_us is not None
    assert not _attestation_events()


def test_the_asyncio_agent_attests_too(edge, other_pilot, sha, tmp_path):
    events: list[str] = []
    transport = AsyncHttpTransport(edge.server, tls=edge.identity(other_pilot), timeout=15)
    agent = Agent(tmp_path / "agent", transport, hook=events.append)
    asyncio.run(agent.astep())
    assert "downloading" in events
    other_pilot.refresh_from_db()
    assert other_pilot.status == DeviceStatus.ACTIVE and other_pilot.attested_nonce_us is not None
    assert not _attestation_events()


def test_the_helper_used_by_the_tls_tests_attests(edge, other_pilot, sha):
    assert attested_checkin(edge.transport(other_pilot))["offer"]["artifact"]["sha256"] == sha
