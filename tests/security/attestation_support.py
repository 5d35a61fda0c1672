"""Check-ins with attestation evidence, as the agent sends them (for tests that speak the protocol by hand)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from devices.agent.attestation import BOOTED_IMAGE, evidence_sign, load_device_key
from tests.device_api.conftest import checkin_body

CHECKIN = "/device/v1/checkin/"
FACTORY_IMAGE = hashlib.sha256(b"factory image\n").hexdigest()


def evidence(key: Path, nonce: str, *, lineage: list[str] | None = None, booted: str | None = None) -> dict[str, Any]:
    """Evidence over `nonce` signed with the key at `key`: by default a device still on its factory image."""
    chain = lineage or [FACTORY_IMAGE]
    return evidence_sign(load_device_key(key), nonce, {BOOTED_IMAGE: booted or chain[-1]}, chain)


def attested_checkin(transport: Any, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Check in; when the answer withholds an offer for want of evidence, again with evidence over its nonce."""
    report = body or checkin_body()
    answer: dict[str, Any] = transport.post_json(CHECKIN, report)
    if not answer.get("attestation_required"):
        return answer
    signed = {**report, "attestation": evidence(transport.tls.key, answer["attestation_nonce"])}
    again: dict[str, Any] = transport.post_json(CHECKIN, signed)
    return again


async def attested_checkin_async(transport: Any, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """attested_checkin on the asyncio transport."""
    report = body or checkin_body()
    answer: dict[str, Any] = await transport.post_json(CHECKIN, report)
    if not answer.get("attestation_required"):
        return answer
    signed = {**report, "attestation": evidence(transport.tls.key, answer["attestation_nonce"])}
    again: dict[str, Any] = await transport.post_json(CHECKIN, signed)
    return again
