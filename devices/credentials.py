"""Per-device credentials issued at provisioning, until the secure update chain (mTLS) replaces them.

Only the sha256 of a secret is stored; the secret is shown once, to the operator who issued it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets

from django.contrib.auth.models import User
from django.db import transaction
from django.utils import timezone

from approvals.audit.records import record_decision
from approvals.audit.security import SecurityEventKind, security_event
from devices.choices import DeviceStatus
from devices.models import Device, DeviceCredential
from devices.services import reason_clean
from ota_project.errors import Conflict, InvalidInput, NotPermitted
from ota_project.roles import Role, has_role

security_log = logging.getLogger("ota.security")

SECRET_BYTES = 32
# Who may cut a device off: the people who run the fleet and the one who answers for its security.
REVOKE_ROLES = (Role.OPERATOR, Role.SECURITY_OFFICER)
# Devices that can never authenticate again get no new credential either.
NO_CREDENTIAL_STATUSES = frozenset({DeviceStatus.REVOKED, DeviceStatus.DECOMMISSIONED})


def secret_hash(secret: str) -> str:
    """sha256 hex of a device secret: what is stored and what a presented secret is compared against."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@transaction.atomic
def device_credential_issue(*, actor: User, device: Device) -> str:
    """Issue (or replace) a device's credential (operator only); returns the secret once and stores its hash."""
    if not has_role(actor, Role.OPERATOR):
        raise _refused(actor, device, "issue", "Only operators issue device credentials.")
    device = Device.objects.select_for_update().get(pk=device.pk)
    if device.status in NO_CREDENTIAL_STATUSES:
        raise Conflict(f"A {device.status} device gets no credential.", code="device_inactive")
    secret = secrets.token_urlsafe(SECRET_BYTES)
    now = timezone.now()
    previous = DeviceCredential.objects.filter(device=device).first()
    DeviceCredential.objects.update_or_create(
        device=device, defaults={"secret_hash": secret_hash(secret), "created_at": now, "revoked_at": None}
    )
    record_decision(
        actor=actor,
        action="devices.credential_issue",
        object_type="device",
        object_id=device.serial,
        # Never the hash in the record: it is enough that a credential was (re)issued and when.
        before={"issued_at": previous.created_at.isoformat()} if previous else None,
        after={"issued_at": now.isoformat(), "replaced": previous is not None},
    )
    return secret


def _refused(actor: User, device: Device, verb: str, message: str) -> NotPermitted:
    # Refusals change nothing here; the security event (kept past the rollback) and the log line are their trace.
    security_log.warning(
        "refused credential %s actor=%s device=%s: %s", verb, actor.get_username(), device.serial, message
    )
    security_event(
        kind=SecurityEventKind.ACTION_UNAUTHORISED,
        source=f"devices.credential_{verb}",
        message=message,
        actor=actor,
        subject=f"device:{device.serial}",
    )
    return NotPermitted(message)


def device_credential_get(*, device: Device) -> DeviceCredential | None:
    """The device's credential record (hash, issue and revocation times), or None if none was ever issued."""
    return DeviceCredential.objects.filter(device=device).first()


@transaction.atomic
def device_credential_revoke(*, actor: User, device: Device, reason: str) -> DeviceCredential:
    """Revoke a device's active credential at once (operator or security officer, reason required, recorded).

    The device is refused from its next request on; a new credential can be issued later (rotation).
    """
    if not has_role(actor, *REVOKE_ROLES):
        raise _refused(actor, device, "revoke", "Only operators and security officers revoke device credentials.")
    reason = reason_clean(reason)
    if not reason:
        raise InvalidInput(
            "A reason is required to revoke a credential.", fields={"reason": ["This field is required."]}
        )
    credential = DeviceCredential.objects.select_for_update().filter(device=device).first()
    if credential is None or credential.revoked_at is not None:
        raise Conflict("The device has no active credential to revoke.", code="no_active_credential")
    now = timezone.now()
    credential.revoked_at = now
    credential.save(update_fields=["revoked_at"])
    record_decision(
        actor=actor,
        action="devices.credential_revoke",
        object_type="device",
        object_id=device.serial,
        before={"issued_at": credential.created_at.isoformat()},
        after={"issued_at": credential.created_at.isoformat(), "revoked_at": now.isoformat()},
        reason=reason,
    )
    return credential
