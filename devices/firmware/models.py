"""Firmware releases and their content-addressed artifacts.

The tables were created by the `rollouts` app and keep their names (`db_table`), so moving the models here moved
no data (see migrations/0001_initial.py).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models


class FirmwareArtifact(models.Model):
    """A firmware image stored once, addressed by the sha256 the server computed while receiving it."""

    sha256 = models.CharField(max_length=64, unique=True)
    size_bytes = models.PositiveBigIntegerField()
    storage_path = models.CharField(max_length=255, help_text="Path relative to ARTIFACT_ROOT.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "rollouts_firmwareartifact"

    def __str__(self) -> str:
        return self.sha256


class FirmwareRelease(models.Model):
    """A firmware release: a semantic version with an anti-rollback counter for its hardware models."""

    version = models.CharField(max_length=64, unique=True)
    release_counter = models.PositiveIntegerField(
        help_text="Anti-rollback security epoch; never falls per hardware model, rises with security fixes."
    )
    hardware_models = models.ManyToManyField(
        "devices.HardwareModel", related_name="releases", db_table="rollouts_firmwarerelease_hardware_models"
    )
    artifact = models.ForeignKey(FirmwareArtifact, on_delete=models.PROTECT, related_name="releases")
    artifact_name = models.CharField(max_length=128, help_text="File name as uploaded (allow-listed).")
    source_revision = models.CharField(max_length=80)
    builder = models.CharField(max_length=120)
    sbom_ref = models.CharField(max_length=500, blank=True, default="")
    notes = models.TextField(blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "rollouts_firmwarerelease"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return self.version


# The key registry's, the image repository's and the director's models are defined in their own packages and registered with this
# app by these imports.
from devices.firmware.director.models import DirectorRoot  # noqa: E402
from devices.firmware.keys.models import SigningKey  # noqa: E402
from devices.firmware.repository.models import ImageMetadata, ImageTarget  # noqa: E402

__all__ = [
    "DirectorRoot",
    "FirmwareArtifact",
    "FirmwareRelease",
    "ImageMetadata",
    "ImageTarget",
    "SigningKey",
]
