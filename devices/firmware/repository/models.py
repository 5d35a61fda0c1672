"""The image repository's published state (app `firmware`): every signed metadata version and every target."""

from __future__ import annotations

from django.db import models


class ImageRole(models.TextChoices):
    """The top-level TUF roles of the image repository; values are TUF's role names."""

    ROOT = "root", "Root"
    TARGETS = "targets", "Targets"
    SNAPSHOT = "snapshot", "Snapshot"
    TIMESTAMP = "timestamp", "Timestamp"


class ImageMetadata(models.Model):
    """One signed version of one role's metadata, byte for byte as published (versions are never rewritten)."""

    role = models.CharField(max_length=16, choices=ImageRole.choices)
    version = models.PositiveIntegerField()
    content = models.BinaryField(help_text="The signed metadata file exactly as served.")
    sha256 = models.CharField(max_length=64)
    expires = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "firmware"
        ordering = ["role", "-version"]
        constraints = [models.UniqueConstraint(fields=["role", "version"], name="one_image_metadata_per_version")]

    def __str__(self) -> str:
        return f"{self.version}.{self.role}.json"


class ImageTarget(models.Model):
    """A release's image as the image targets list it: added only by the approval-gated signing step."""

    release = models.OneToOneField("firmware.FirmwareRelease", on_delete=models.PROTECT, related_name="image_target")
    path = models.CharField(max_length=255, unique=True, help_text="TUF target path: <version>/<artifact name>.")
    sha256 = models.CharField(max_length=64)
    length = models.PositiveBigIntegerField()
    hardware_ids = models.JSONField(help_text="Hardware model names the image is for (custom field).")
    release_counter = models.PositiveIntegerField(help_text="Anti-rollback counter (custom field).")
    change_id = models.PositiveIntegerField(help_text="The approved change request the signing step checked.")
    targets_version = models.PositiveIntegerField(help_text="The targets metadata version that first listed it.")
    signed_at = models.DateTimeField()

    class Meta:
        app_label = "firmware"
        ordering = ["path"]

    def __str__(self) -> str:
        return self.path
