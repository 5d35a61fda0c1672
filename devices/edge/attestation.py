"""Attestation at check-in (the rules are devices.attestation's; the message format is devices.agent.attestation's).

Over a device certificate (OTA_DEVICE_AUTH=certificate, the production default) every check-in answer carries a
fresh `attestation_nonce`, and no offer is made unless the check-in carried evidence over an earlier one that
verifies: signed with the key of the certificate the device presented, over a nonce issued to this device that is
fresh and used for the first time, with a lineage and boot measurement the server expects. When a check-in waits
for an offer without such evidence (none, or a nonce gone stale while the device was offline) the answer says
`attestation_required` and the agent checks in again at once with the new nonce. Evidence that fails (a forged or
replayed nonce, a signature by another key, a lineage or measurement that does not match) quarantines the device
(a decision record by the system, `device_quarantine`), records a `device_attestation_failed` security event and
answers no offer; a person releases the device after investigating (README runbook).

Costs: issuing a nonce is an HMAC (no database); an idle check-in without evidence costs nothing more; one with
evidence adds one statement (consume the nonce and read the expected images together, `_consume`).

OTA_DEVICE_AUTH=secret (development mode, no device key): no nonce, no evidence, offers as before.
OTA_DEVICE_ATTESTATION=off turns the requirement off (e.g. while a fleet's agents are upgraded); default required.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from django.conf import settings
from django.db import connection
from django.db.models import QuerySet

from approvals.audit.security import SecurityEventKind, security_event
from devices.agent.attestation import evidence_signature_valid
from devices.attestation import ExpectedImages, Nonce, NonceRefused, evidence_mismatch, nonce_issue, nonce_verify
from devices.edge.download_tokens import derived_key
from devices.edge.identity import PresentedIdentity
from devices.models import Device
from devices.services import device_quarantine
from ota_project.errors import DomainError
from rollouts.choices import DeploymentStatus
from rollouts.models import Deployment, FirmwareRelease

logger = logging.getLogger(__name__)


class Verdict(enum.Enum):
    """What the check-in's evidence established."""

    OFF = "off"  # attestation does not apply (development mode, or turned off): offers as before
    ABSENT = "absent"  # no usable evidence (none, or a stale nonce): no offer this time, a nonce to attest with
    VERIFIED = "verified"  # the evidence holds: offers may be made
    REFUSED = "refused"  # the evidence failed: the device is quarantined, no offer


@dataclass(frozen=True)
class Attestation:
    """The verdict and the answer fields it adds (a fresh nonce, and whether an offer was withheld for evidence)."""

    verdict: Verdict
    nonce: str = ""

    @property
    def offers_allowed(self) -> bool:
        """Whether the offer rules may run: not without evidence. After a refusal they run, and find the device
        quarantined: deployment_offer then withdraws what it was offered and a download gets no fresh URL."""
        return self.verdict is not Verdict.ABSENT

    def answer_fields(self, *, withheld: bool) -> dict[str, Any]:
        fields: dict[str, Any] = {"attestation_nonce": self.nonce} if self.nonce else {}
        if withheld:
            fields["attestation_required"] = True
        return fields


def attestation_enforced(presented: PresentedIdentity) -> bool:
    """Attestation applies to devices presenting a certificate, unless OTA_DEVICE_ATTESTATION=off."""
    return presented.by_certificate and getattr(settings, "OTA_DEVICE_ATTESTATION", "required") != "off"


def _key() -> bytes:
    return derived_key(b"attestation-nonce")


def checkin_attestation(
    *, presented: PresentedIdentity, device_id: int, evidence: dict[str, Any] | None, address: str, now: float
) -> Attestation:
    """Check the evidence a check-in carries (shape already validated) and mint the answer's fresh nonce."""
    if not attestation_enforced(presented):
        return Attestation(Verdict.OFF)
    fresh = nonce_issue(key=_key(), device_id=device_id, now=now)
    if evidence is None:
        return Attestation(Verdict.ABSENT, fresh)
    try:
        nonce = nonce_verify(evidence["nonce"], key=_key(), device_id=device_id, now=now)
    except NonceRefused as refused:
        if refused.code == "stale":  # an honest device back from a long time offline: it attests again at once
            return Attestation(Verdict.ABSENT, fresh)
        return _refused(device_id, presented, address, refused.message, fresh)
    if not evidence_signature_valid(_public_key(presented.certificate), evidence):
        why = "The evidence is not signed by the key of the device's certificate."
        return _refused(device_id, presented, address, why, fresh)
    consumed, expected = _consume(device_id, nonce)
    if not consumed:
        return _refused(device_id, presented, address, "The attestation nonce was used before (replay).", fresh)
    mismatch = evidence_mismatch(evidence, expected)
    if mismatch is not None:
        return _refused(device_id, presented, address, mismatch, fresh)
    return Attestation(Verdict.VERIFIED, fresh)


def _public_key(der: bytes) -> Any:
    try:
        return x509.load_der_x509_certificate(der).public_key()
    except ValueError:
        return None


def _sql(queryset: QuerySet[Any]) -> tuple[str, list[Any]]:
    text, params = queryset.query.sql_with_params()
    return text, list(params)


def _consume(device_id: int, nonce: Nonce) -> tuple[bool, ExpectedImages]:
    """Use the nonce (only one issued after the last used one passes) and read the expected images: one statement.

    The conditional UPDATE decides single use atomically: of two check-ins with one nonce exactly one consumes it."""
    delivered = (
        Deployment.objects.filter(device_id=device_id)
        .exclude(status=DeploymentStatus.PENDING)
        .order_by()
        .values("release__artifact__sha256")
    )
    installed = FirmwareRelease.objects.filter(
        version__in=Device.objects.filter(pk=device_id).values("installed_version")
    ).values("artifact__sha256")
    current = (
        Deployment.objects.filter(device_id=device_id, status=DeploymentStatus.SUCCEEDED)
        .order_by("-finished_at", "-pk")
        .values("release__artifact__sha256")[:1]
    )
    delivered_sql, delivered_params = _sql(delivered)
    installed_sql, installed_params = _sql(installed)
    current_sql, current_params = _sql(current)
    table = connection.ops.quote_name(Device._meta.db_table)
    column = connection.ops.quote_name("attested_nonce_us")
    sql = (
        f"WITH consumed AS (UPDATE {table} SET {column} = %s WHERE {table}.{connection.ops.quote_name('id')} = %s "
        f"AND ({column} IS NULL OR {column} < %s) RETURNING 1) "
        f"SELECT EXISTS (SELECT 1 FROM consumed), ARRAY(({delivered_sql}) UNION ({installed_sql})), ({current_sql})"
    )
    params = [nonce.issued_us, device_id, nonce.issued_us, *delivered_params, *installed_params, *current_params]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        consumed, images, running = cursor.fetchone()
    return bool(consumed), ExpectedImages(delivered=frozenset(images or ()), current=running)


def _refused(device_id: int, presented: PresentedIdentity, address: str, why: str, fresh: str) -> Attestation:
    """Quarantine the device (a system decision with the reason) and record the security event."""
    device = Device.objects.filter(pk=device_id).only("pk", "serial", "status").first()
    serial = device.serial if device is not None else ""
    security_event(
        kind=SecurityEventKind.DEVICE_ATTESTATION_FAILED,
        source="device_api.checkin",
        message=why,
        device_serial=serial,
        address=address,
        subject=f"certificate:sha256:{presented.fingerprint}",
    )
    if device is not None:
        try:
            device_quarantine(actor=None, device=device, reason=f"Attestation failed: {why}")
        except DomainError:  # moved meanwhile (revoked, already quarantined): it gets no offer either way
            logger.warning("device %s: attestation failed, not quarantined (status changed)", serial)
    logger.warning("device %s: attestation failed: %s", serial, why)
    return Attestation(Verdict.REFUSED, fresh)
