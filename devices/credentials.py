"""Per-device credentials issued at provisioning, until the secure update chain (mTLS) replaces them.

Only the sha256 of a secret is stored; the secret is shown once, to the operator who issued it.
"""

from __future__ import annotations

import hashlib
import secrets

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from approvals.records import record_decision
from devices.choices import DeviceStatus
from devices.models import Device, DeviceCredential
from ota_project.errors import Conflict, NotPermitted
from ota_project.roles import Role, has_role

SECRET_BYTES = 32
# Devices that can never authenticate again get no new credential either.
NO_CREDENTIAL_STATUSES = frozenset({DeviceStatus.REVOKED, DeviceStatus.DECOMMISSIONED})


def secret_hash(secret: str) -> str:
    """sha256 hex of a device secret: what is stored and what a presented secret is compared against."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@transaction.atomic
def device_credential_issue(*, actor: AbstractBaseUser, device: Device) -> str:
    """Issue (or replace) a device's credential (operator only); returns the secret once and stores its hash."""
    if not has_role(actor, Role.OPERATOR):
        raise NotPermitted("Only operators issue device credentials.")
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
        object_id=device.pk,
        # Never the hash in the record: it is enough that a credential was (re)issued and when.
        before={"issued_at": previous.created_at.isoformat()} if previous else None,
        after={"issued_at": now.isoformat(), "replaced": previous is not None},
    )
    return secret


@transaction.atomic
def device_credential_revoke(*, actor: AbstractBaseUser, device: Device, reason: str = "") -> bool:
    """Revoke a device's credential (operator only); True if an active credential was revoked (idempotent)."""
    if not has_role(actor, Role.OPERATOR):
        raise NotPermitted("Only operators revoke device credentials.")
    now = timezone.now()
    revoked = DeviceCredential.objects.filter(device=device, revoked_at__isnull=True).update(revoked_at=now)
    if revoked:
        record_decision(
            actor=actor,
            action="devices.credential_revoke",
            object_type="device",
            object_id=device.pk,
            after={"revoked_at": now.isoformat()},
            reason=reason,
        )
    return bool(revoked)
