"""Reads of the image repository's published state."""

from __future__ import annotations

from django.db.models import QuerySet

from devices.firmware.repository.models import ExpiryAlert, ImageMetadata, ImageRole


def image_metadata_latest(role: str) -> ImageMetadata | None:
    """The newest signed version of a role (None before `image_repository init`)."""
    return ImageMetadata.objects.filter(role=role).order_by("-version").first()


def image_repository_initialised() -> bool:
    """True once a root is stored: from then on every rollout start signs its release."""
    return ImageMetadata.objects.filter(role=ImageRole.ROOT).exists()


def expiry_alert_open_list() -> QuerySet[ExpiryAlert]:
    """The expiry audit's open alerts, critical first, soonest expiry first (what the security page shows)."""
    return ExpiryAlert.objects.filter(resolved_at__isnull=True).order_by("severity", "expires_at", "subject")
