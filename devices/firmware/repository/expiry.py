"""The expiry audit: what in the signed chain is close to expiry, or trusted when it must not be.

Findings (audit findings of kind `signing_expiry`, kept by approvals.audit.findings.findings_sync like every other
audit's: opened once, kept up to date while they last, resolved when they go; each run that opens or resolves one
appends a decision record; shown on the security page, the findings page and the admin):
- metadata: the newest version of each role expires within its warning margin (root: OTA_EXPIRY_WARN_ROOT_DAYS,
  default 30; targets, snapshot, timestamp: a quarter of their lifetime, i.e. the refresh, which re-signs at half,
  has been failing for a while) - critical once expired;
- keys: the published root names a revoked key (clients still trust a compromised key: rotate the root now,
  critical); an active key the published root does not name yet (the repository signs with the retired one until
  a root rotation; warning); a key older than its maximum age (OTA_KEY_MAX_AGE_DAYS, default 365 for online keys,
  OTA_OFFLINE_KEY_MAX_AGE_DAYS 1825 for root keys), flagged from 30 days before.
Run by the Temporal schedule `expiry-audit` (workflows/schedules.py) and `image_repository expiry-audit`; idempotent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.utils import timezone
from tuf.api.metadata import Metadata, Root

from approvals.audit.choices import AuditKind, FindingSeverity
from approvals.audit.findings import Finding, findings_sync
from devices.firmware.keys.choices import KeyState
from devices.firmware.keys.models import SigningKey
from devices.firmware.repository.models import ImageRole
from devices.firmware.repository.selectors import image_metadata_latest
from ota_project.hsm.roles import OFFLINE_ROLES, KeyRole

# The image repository's key roles (the director's and the audit key are reported by their own rooms).
_REPOSITORY_ROLES = frozenset(KeyRole) - {KeyRole.DIRECTOR, KeyRole.DIRECTOR_ROOT, KeyRole.AUDIT_CHECKPOINT}
KEY_AGE_WARNING = timedelta(days=30)


@dataclass(frozen=True)
class ExpiryFinding:
    """One thing the audit flags."""

    subject_type: str
    subject: str
    code: str
    severity: str
    message: str
    expires_at: datetime | None = None


def _setting(name: str, default: int) -> int:
    return int(getattr(settings, name, default))


def _metadata_findings(now: datetime) -> list[ExpiryFinding]:
    findings = []
    for role in ImageRole.values:
        latest = image_metadata_latest(role)
        if latest is None:
            continue
        lifetime = timedelta(days=settings.IMAGE_REPOSITORY_EXPIRY_DAYS[role])
        margin = timedelta(days=_setting("EXPIRY_WARN_ROOT_DAYS", 30)) if role == ImageRole.ROOT else lifetime / 4
        name = f"{latest.version}.{role}.json"
        if latest.expires <= now:
            findings.append(
                ExpiryFinding(
                    "image_metadata", role, "expired", FindingSeverity.CRITICAL,
                    f"{name} expired at {latest.expires:%Y-%m-%d %H:%M} UTC: clients refuse the repository.",
                    latest.expires,
                )
            )  # fmt: skip
        elif latest.expires - now < margin:
            action = "rotate the root (image_repository rotate-root)" if role == ImageRole.ROOT else "check the refresh"
            findings.append(
                ExpiryFinding(
                    "image_metadata", role, "expires_soon", FindingSeverity.WARNING,
                    f"{name} expires at {latest.expires:%Y-%m-%d %H:%M} UTC: {action}.",
                    latest.expires,
                )
            )  # fmt: skip
    return findings


def _key_findings(now: datetime) -> list[ExpiryFinding]:
    stored_root = image_metadata_latest(ImageRole.ROOT)
    named: set[str] = set()
    if stored_root is not None:
        root = Metadata[Root].from_bytes(bytes(stored_root.content)).signed
        named = {keyid for role in root.roles.values() for keyid in role.keyids}
    findings = []
    keys = SigningKey.objects.filter(role__in=_REPOSITORY_ROLES)
    for key in keys.order_by("role", "created_at"):
        if key.state == KeyState.REVOKED and key.key_id in named:
            findings.append(
                ExpiryFinding(
                    "signing_key", key.key_id, "revoked_key_trusted", FindingSeverity.CRITICAL,
                    f"The published root v{stored_root.version if stored_root else '?'} still names revoked "
                    f"{key.role} key {key.key_id}: sign and publish a root without it now (image_repository "
                    "rotate-root).",
                )
            )  # fmt: skip
        if key.state != KeyState.ACTIVE:
            continue
        if stored_root is not None and key.key_id not in named:
            findings.append(
                ExpiryFinding(
                    "signing_key", key.key_id, "key_not_in_root", FindingSeverity.WARNING,
                    f"Active {key.role} key {key.key_id} is not named by the published root: rotate the root so "
                    "the repository signs with it.",
                )
            )  # fmt: skip
        max_age = timedelta(
            days=_setting("OFFLINE_KEY_MAX_AGE_DAYS", 1825)
            if key.role in OFFLINE_ROLES
            else _setting("KEY_MAX_AGE_DAYS", 365)
        )
        due = key.created_at + max_age
        if due - now < KEY_AGE_WARNING:
            findings.append(
                ExpiryFinding(
                    "signing_key", key.key_id, "key_due_for_rotation",
                    FindingSeverity.CRITICAL if due <= now else FindingSeverity.WARNING,
                    f"{key.role} key {key.key_id} reaches its maximum age at {due:%Y-%m-%d}: rotate it (keys rotate, "
                    "then image_repository rotate-root).",
                    due,
                )
            )  # fmt: skip
    return findings


def expiry_findings(*, now: datetime | None = None) -> list[ExpiryFinding]:
    """What is close to expiry or wrongly trusted right now (no writes)."""
    now = now or timezone.now()
    return _metadata_findings(now) + _key_findings(now)


def expiry_audit(*, now: datetime | None = None) -> list[ExpiryFinding]:
    """Flag what is close to expiry: open a finding per new one, refresh the ones still there, resolve the ones
    gone (findings_sync, kind `signing_expiry`); returns the current findings. Idempotent."""
    now = now or timezone.now()
    findings = expiry_findings(now=now)
    findings_sync(
        kind=AuditKind.SIGNING_EXPIRY,
        findings=[
            Finding(
                finding.subject_type,
                finding.subject,
                finding.code,
                finding.severity,
                finding.message,
                {"expires_at": finding.expires_at.astimezone(UTC).isoformat()} if finding.expires_at else {},
            )
            for finding in findings
        ],
        now=now,
    )
    return findings
