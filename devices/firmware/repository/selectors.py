"""Reads of the image repository's published state."""

from __future__ import annotations

from django.db.models import QuerySet

from approvals.audit.choices import AuditKind
from approvals.audit.findings import audit_finding_list
from approvals.audit.models import AuditFinding
from devices.firmware.repository.models import ImageMetadata, ImageRole


def image_metadata_latest(role: str) -> ImageMetadata | None:
    """The newest signed version of a role (None before `image_repository init`)."""
    return ImageMetadata.objects.filter(role=role).order_by("-version").first()


def image_repository_initialised() -> bool:
    """True once a root is stored: from then on every rollout start signs its release."""
    return ImageMetadata.objects.filter(role=ImageRole.ROOT).exists()


def expiry_alert_open_list() -> QuerySet[AuditFinding]:
    """The expiry audit's open findings, critical first (what the security page and `image_repository status` show)."""
    return audit_finding_list(kind=AuditKind.SIGNING_EXPIRY)
