"""Key states and locations; values live in rows and are never renamed."""

from __future__ import annotations

from django.db import models

from ota_project.hsm.public import KeyAlgorithm


class KeyState(models.TextChoices):
    """A key's life: active (signs for its role) -> retired (replaced) | revoked (compromised or withdrawn)."""

    ACTIVE = "active", "Active"
    RETIRED = "retired", "Retired"
    REVOKED = "revoked", "Revoked"


KEY_TRANSITIONS: dict[str, frozenset[str]] = {
    KeyState.ACTIVE: frozenset({KeyState.RETIRED, KeyState.REVOKED}),
    KeyState.RETIRED: frozenset({KeyState.REVOKED}),
    KeyState.REVOKED: frozenset(),
}


class KeyLocation(models.TextChoices):
    """Where the private half lives: the server's token, or an offline token (only the public half is here)."""

    SERVER_TOKEN = "server_token", "Server token"
    OFFLINE = "offline", "Offline token"


ALGORITHM_CHOICES = [(algorithm.value, algorithm.value) for algorithm in KeyAlgorithm]
