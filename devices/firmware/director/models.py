"""The director's published roots (app `firmware`): every signed version of the director's root, byte for byte."""

from __future__ import annotations

from django.db import models


class DirectorRoot(models.Model):
    """One signed version of the director's root (versions are never rewritten; v1 is what vehicles are given)."""

    version = models.PositiveIntegerField(unique=True)
    content = models.BinaryField(help_text="The signed root metadata exactly as served.")
    sha256 = models.CharField(max_length=64)
    expires = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "firmware"
        ordering = ["-version"]

    def __str__(self) -> str:
        return f"director {self.version}.root.json"
