"""The signing-key registry's table (app `firmware`)."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from devices.firmware.keys.choices import ALGORITHM_CHOICES, KeyLocation, KeyState
from ota_project.hsm.roles import KeyRole


class SigningKey(models.Model):
    """One signing key of one role: at most one active key per role (constraint), and a key id names one row only,
    so no key ever serves two roles."""

    role = models.CharField(max_length=40, choices=KeyRole.choices)
    key_id = models.CharField(max_length=64, unique=True, help_text="TUF key id: sha256 of the canonical key.")
    algorithm = models.CharField(max_length=16, choices=ALGORITHM_CHOICES)
    public_key_pem = models.TextField()
    location = models.CharField(max_length=16, choices=KeyLocation.choices)
    token_label = models.CharField(max_length=128, blank=True, default="", help_text="Label in the server token.")
    state = models.CharField(max_length=16, choices=KeyState.choices, default=KeyState.ACTIVE)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField()
    retired_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    retired_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True, blank=True
    )
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoke_reason = models.TextField(blank=True, default="")

    class Meta:
        app_label = "firmware"
        ordering = ["role", "-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["role"], condition=models.Q(state=KeyState.ACTIVE), name="one_active_signing_key_per_role"
            ),
            models.CheckConstraint(condition=models.Q(state__in=KeyState.values), name="signing_key_state_known"),
            models.CheckConstraint(
                condition=~models.Q(state=KeyState.REVOKED) | models.Q(revoked_at__isnull=False),
                name="signing_key_revoked_has_time",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.role} {self.key_id[:12]} ({self.state})"
