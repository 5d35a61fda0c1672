"""What the project's management commands share: the acting person by username, a refusal as one line."""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.models import User
from django.core.management.base import CommandError

from ota_project.errors import DomainError


def active_user(username: str) -> User:
    """The active person named `username`, or a CommandError naming the missing one."""
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise CommandError(f"no active user named {username!r}")
    return user


def refusal_text(exc: DomainError) -> str:
    """A refused domain step as one line: the message, then each field's problems."""
    details = "; ".join(f"{name}: {' '.join(map(str, messages))}" for name, messages in exc.fields.items())
    return f"{exc.message} ({details})" if details else exc.message
