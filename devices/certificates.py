"""Device certificates: provision (issue), renew and revoke; every action a decision record.

The device API finds a device by its active certificate row (devices.edge.identity.accepted_certificate_devices);
`Device.certificate_fingerprint` mirrors the active fingerprint for the pages. A revocation or renewal changes the
row's status in its transaction, so from the next request on the device API refuses the certificate (bound: 0 s
for check-ins, status reports and telemetry; a download already vouched for stops within
OTA_DOWNLOAD_RECHECK_SECONDS).
The database holds the rules: one active certificate per device (a partial unique index), one device per
fingerprint (unique).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from approvals.audit.records import record_decision
from approvals.audit.security import SecurityEventKind, security_event
from devices.choices import CertificateStatus, DeviceStatus
from devices.models import Device, DeviceCertificate
from devices.pki import (
    DeviceKeyPair,
    ca_create,
    ca_exists,
    ca_lock,
    device_certificate_days,
    device_certificate_make,
    issuer_open,
)
from devices.services import reason_clean
from ota_project.errors import Conflict, InvalidInput, NotPermitted
from ota_project.roles import Role, has_role

security_log = logging.getLogger("ota.security")

ISSUE_ROLES = (Role.OPERATOR,)
REVOKE_ROLES = (Role.OPERATOR, Role.SECURITY_OFFICER)
NO_CERTIFICATE_STATUSES = frozenset({DeviceStatus.REVOKED, DeviceStatus.DECOMMISSIONED})
MAX_BATCH = 10_000


@dataclass(frozen=True)
class Renewal:
    """A renewed device: its new key pair, and the serial of the certificate it replaced."""

    issued: DeviceKeyPair
    replaced_serial_number: str


def device_ca_create(*, actor: User | None, storage: str, rotation: bool = False, system_actor: str = "system") -> str:
    """Create (or, with `rotation`, replace) the device CA and record it; returns the intermediate's fingerprint.

    Only the system (a command run by the host's operator) or an operator."""
    _check_actor(actor, ISSUE_ROLES, "create", "device_ca")
    if ca_exists() and not rotation:
        raise Conflict("A device CA exists; rotate it instead.", code="device_ca_exists")
    created = ca_create(storage=storage)
    with transaction.atomic():
        record_decision(
            actor=actor,
            system_actor=system_actor,
            action="devices.ca_create",
            object_type="device_ca",
            object_id=created.intermediate_fingerprint,
            after={
                "root": created.root_fingerprint,
                "intermediate": created.intermediate_fingerprint,
                "storage": created.storage,
                "key_id": created.key_id,
                "rotation": rotation,
            },
        )
    return created.intermediate_fingerprint


def device_ca_ensure() -> None:
    """The device CA, created (and recorded) on first use by `make run`, the drills and the benchmarks."""
    with ca_lock():
        if not ca_exists():
            device_ca_create(actor=None, storage=str(getattr(settings, "OTA_DEVICE_CA_KEY", "token")))


def _refused(actor: User | None, verb: str, subject: str, message: str) -> NotPermitted:
    security_log.warning(
        "refused certificate %s actor=%s %s: %s", verb, getattr(actor, "username", None), subject, message
    )
    security_event(
        kind=SecurityEventKind.ACTION_UNAUTHORISED,
        source=f"devices.certificate_{verb}",
        message=message,
        actor=actor,
        subject=subject,
    )
    return NotPermitted(message)


def _check_actor(actor: User | None, roles: tuple[str, ...], verb: str, subject: str) -> None:
    """System actions (actor None: `make run`, the drills' provisioning) pass; a person needs one of `roles`."""
    if actor is not None and not has_role(actor, *roles):
        names = " or ".join(f"{role}s" for role in roles)
        raise _refused(actor, verb, subject, f"Only {names} may {verb} device certificates.")


def _row(device: Device, issued: DeviceKeyPair, now: dt.datetime) -> DeviceCertificate:
    return DeviceCertificate(
        device=device,
        fingerprint=issued.fingerprint,
        serial_number=issued.serial_number,
        not_before=issued.not_before,
        not_after=issued.not_after,
        issued_at=now,
    )


def _snapshot(issued: DeviceKeyPair) -> dict[str, str]:
    return {
        "fingerprint": issued.fingerprint,
        "serial_number": issued.serial_number,
        "not_after": issued.not_after.isoformat(),
    }


@transaction.atomic
def device_certificates_provision(*, actor: User | None, devices: Sequence[Device]) -> list[DeviceKeyPair]:
    """Issue a first certificate to each device (operator, or the system); one decision record per batch.

    Refused (nothing issued) when a device already has an active certificate (renew it) or can never connect
    again. The devices' rows are locked for the batch; the certificates are signed in one token session."""
    serials = sorted({device.serial for device in devices})
    _check_actor(actor, ISSUE_ROLES, "issue", f"devices:{len(serials)}")
    if not serials:
        raise InvalidInput("No devices to provision.", fields={"serials": ["At least one device is required."]})
    if len(serials) > MAX_BATCH:
        raise InvalidInput(f"At most {MAX_BATCH} devices per batch.", fields={"serials": ["Too many devices."]})
    locked = list(Device.objects.select_for_update().filter(serial__in=serials).order_by("pk"))
    if len(locked) != len(serials):
        missing = sorted(set(serials) - {device.serial for device in locked})
        raise InvalidInput("Unknown devices.", fields={"serials": [f"No device {serial}." for serial in missing[:20]]})
    inactive = [device.serial for device in locked if device.status in NO_CERTIFICATE_STATUSES]
    if inactive:
        raise Conflict(f"Inactive devices get no certificate: {', '.join(inactive[:20])}.", code="device_inactive")
    holding = sorted(
        DeviceCertificate.objects.filter(device__in=locked, status=CertificateStatus.ACTIVE).values_list(
            "device__serial", flat=True
        )
    )
    if holding:
        raise Conflict(f"Already provisioned (renew instead): {', '.join(holding[:20])}.", code="certificate_active")
    days = device_certificate_days()
    now = timezone.now()
    with issuer_open() as issuer:
        issued = [device_certificate_make(issuer, serial=device.serial, days=days) for device in locked]
    DeviceCertificate.objects.bulk_create(
        [_row(device, pair, now) for device, pair in zip(locked, issued, strict=True)]
    )
    for device, pair in zip(locked, issued, strict=True):
        device.certificate_fingerprint = pair.fingerprint
    Device.objects.bulk_update(locked, ["certificate_fingerprint"])
    record_decision(
        actor=actor,
        action="devices.certificate_issue",
        object_type="device" if len(locked) == 1 else "device_batch",
        object_id=locked[0].serial if len(locked) == 1 else f"{len(locked)} devices",
        after={"days": days, "certificates": {pair.serial: _snapshot(pair) for pair in issued}},
    )
    return issued


@transaction.atomic
def device_certificate_renew(*, actor: User | None, device: Device, reason: str = "") -> Renewal:
    """Replace the device's active certificate with a new key and certificate (operator, or the system).

    The old certificate is superseded at once (the device must switch to the new one; its next request with
    the old one is refused). A renewal never brings back a revoked certificate: a device without an active
    certificate is provisioned again, which needs no active one."""
    subject = f"device:{device.serial}"
    _check_actor(actor, ISSUE_ROLES, "renew", subject)
    locked = Device.objects.select_for_update().get(pk=device.pk)
    if locked.status in NO_CERTIFICATE_STATUSES:
        raise Conflict(f"A {locked.status} device gets no certificate.", code="device_inactive")
    current = (
        DeviceCertificate.objects.select_for_update().filter(device=locked, status=CertificateStatus.ACTIVE).first()
    )
    if current is None:
        raise Conflict("The device has no active certificate to renew: provision it.", code="no_active_certificate")
    now = timezone.now()
    with issuer_open() as issuer:
        issued = device_certificate_make(issuer, serial=locked.serial, days=device_certificate_days())
    DeviceCertificate.objects.filter(pk=current.pk).update(
        status=CertificateStatus.SUPERSEDED, ended_at=now, reason=reason_clean(reason) or "renewed"
    )
    _row(locked, issued, now).save(force_insert=True)
    Device.objects.filter(pk=locked.pk).update(certificate_fingerprint=issued.fingerprint)
    record_decision(
        actor=actor,
        action="devices.certificate_renew",
        object_type="device",
        object_id=locked.serial,
        before={"fingerprint": current.fingerprint, "serial_number": current.serial_number},
        after=_snapshot(issued),
        reason=reason_clean(reason),
    )
    return Renewal(issued=issued, replaced_serial_number=current.serial_number)


def certificates_due_for_renewal(*, within_days: int | None = None) -> list[Device]:
    """Devices whose active certificate expires within `within_days` (OTA_DEVICE_CERT_RENEW_DAYS by default)."""
    days = within_days if within_days is not None else int(getattr(settings, "OTA_DEVICE_CERT_RENEW_DAYS", 30))
    horizon = timezone.now() + dt.timedelta(days=days)
    return list(
        Device.objects.filter(
            certificates__status=CertificateStatus.ACTIVE, certificates__not_after__lte=horizon
        ).exclude(status__in=NO_CERTIFICATE_STATUSES)
    )


@transaction.atomic
def device_certificate_revoke(*, actor: User, device: Device, reason: str) -> DeviceCertificate:
    """Revoke the device's active certificate (operator or security officer, reason required, recorded).

    Honoured from the device's next request (the fingerprint leaves the device row in this transaction)."""
    subject = f"device:{device.serial}"
    _check_actor_person(actor, subject)
    reason = reason_clean(reason)
    if not reason:
        raise InvalidInput(
            "A reason is required to revoke a certificate.", fields={"reason": ["This field is required."]}
        )
    locked = Device.objects.select_for_update().get(pk=device.pk)
    current = (
        DeviceCertificate.objects.select_for_update().filter(device=locked, status=CertificateStatus.ACTIVE).first()
    )
    if current is None:
        raise Conflict("The device has no active certificate to revoke.", code="no_active_certificate")
    now = timezone.now()
    DeviceCertificate.objects.filter(pk=current.pk).update(
        status=CertificateStatus.REVOKED, ended_at=now, reason=reason
    )
    Device.objects.filter(pk=locked.pk, certificate_fingerprint=current.fingerprint).update(
        certificate_fingerprint=None
    )
    record_decision(
        actor=actor,
        action="devices.certificate_revoke",
        object_type="device",
        object_id=locked.serial,
        before={"fingerprint": current.fingerprint, "serial_number": current.serial_number, "status": "active"},
        after={"fingerprint": current.fingerprint, "status": "revoked", "revoked_at": now.isoformat()},
        reason=reason,
    )
    current.refresh_from_db()
    return current


def _check_actor_person(actor: User, subject: str) -> None:
    # A revocation always names the person who made it: no system revocations.
    if actor is None or not has_role(actor, *REVOKE_ROLES):
        raise _refused(actor, "revoke", subject, "Only operators or security officers may revoke device certificates.")


def certificate_presented_revoked(fingerprint: str) -> DeviceCertificate | None:
    """The certificate with this fingerprint if it is no longer active (read only when authentication failed)."""
    return (
        DeviceCertificate.objects.filter(fingerprint=fingerprint)
        .exclude(status=CertificateStatus.ACTIVE)
        .select_related("device")
        .first()
    )
