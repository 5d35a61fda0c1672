"""The one mail path: e-mail to people by role through Django's mail backends, sent after the decision commits."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from django.conf import settings
from django.contrib.auth.models import User
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import QuerySet

logger = logging.getLogger(__name__)


def users_with_roles(*roles: str) -> QuerySet[User]:
    """Active people holding any of the roles."""
    return User.objects.filter(is_active=True, groups__name__in=roles).distinct().order_by("username")


def notify_people(people: Iterable[User], *, subject: str, body: str) -> list[str]:
    """Mail each person with an address once the surrounding transaction commits; returns their usernames.

    A mail server that refuses is logged, never raised: the decision is committed and recorded either way.
    """
    recipients = [(person.get_username(), person.email) for person in people if person.email]
    if not recipients:
        return []

    def send() -> None:
        for username, address in recipients:
            try:
                send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [address])
            except Exception:  # noqa: BLE001 - a mail relay down must not undo or repeat the recorded step
                logger.exception("mail to %s (%s) failed: %s", username, address, subject)

    transaction.on_commit(send)
    return [username for username, _ in recipients]
