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


class ExpiryAlertSeverity(models.TextChoices):
    """How soon something must be renewed; values live in rows and are never renamed."""

    WARNING = "warning", "Warning: renew soon"
    CRITICAL = "critical", "Critical: expired, or trusted while it must not be"


class ExpiryAlert(models.Model):
    """One open (or resolved) finding of the expiry audit: metadata, a key (and later a certificate) close to expiry
    or trusted when it should not be. At most one open alert per subject and code (constraint); the audit updates
    it while the finding stays and resolves it when it goes."""

    subject_type = models.CharField(max_length=32, help_text="image_metadata, signing_key, certificate ...")
    subject = models.CharField(max_length=128, help_text="What it is about, e.g. timestamp.json or a key id.")
    code = models.CharField(max_length=48, help_text="The finding, e.g. expires_soon, revoked_key_trusted.")
    severity = models.CharField(max_length=16, choices=ExpiryAlertSeverity.choices)
    message = models.TextField()
    expires_at = models.DateTimeField(null=True, blank=True)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        app_label = "firmware"
        ordering = ["resolved_at", "-severity", "expires_at", "subject"]
        constraints = [
            models.UniqueConstraint(
                fields=["subject_type", "subject", "code"],
                condition=models.Q(resolved_at__isnull=True),
                name="one_open_expiry_alert_per_finding",
            ),
            models.CheckConstraint(
                condition=models.Q(severity__in=ExpiryAlertSeverity.values), name="expiry_alert_severity_known"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.severity} {self.subject_type} {self.subject}: {self.code}"
