"""Reads of the key registry."""

from __future__ import annotations

from django.db.models import QuerySet

from devices.firmware.keys.choices import KeyState
from devices.firmware.keys.models import SigningKey


def signing_key_list(*, role: str | None = None, state: str | None = None) -> QuerySet[SigningKey]:
    """Registered keys, by role then newest first, optionally of one role or state."""
    keys = SigningKey.objects.select_related("created_by", "retired_by", "revoked_by")
    if role is not None:
        keys = keys.filter(role=role)
    if state is not None:
        keys = keys.filter(state=state)
    return keys


def signing_key_active(role: str) -> SigningKey | None:
    """The active key of a role (None when it has none): what signs for that role now."""
    return SigningKey.objects.filter(role=role, state=KeyState.ACTIVE).first()
