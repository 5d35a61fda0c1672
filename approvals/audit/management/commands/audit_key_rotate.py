"""Rotate the audit signing key: verify, retire the old key (its public half stays known), start a new one."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit.checkpoints import audit_key_rotate
from ota_project.errors import DomainError


class Command(BaseCommand):
    help = (
        "Rotate the audit signing key: refused unless the decision record verifies; the old public key is kept in "
        "the retired-keys directory so everything it signed still verifies; the rotation is recorded."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--actor", help="Username the rotation is recorded under (default: system).")
        parser.add_argument("--reason", default="", help="Why the key is rotated (kept in the record).")

    def handle(self, *args: Any, **options: Any) -> None:
        actor = None
        if options["actor"]:
            user_model = get_user_model()
            try:
                actor = user_model.objects.get(**{user_model.USERNAME_FIELD: options["actor"], "is_active": True})
            except user_model.DoesNotExist as exc:
                raise CommandError(f"no active user named {options['actor']!r}") from exc
        try:
            rotation = audit_key_rotate(actor=actor, reason=options["reason"])
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(
            f"retired key {rotation.retired_key_id} (public key kept in {settings.AUDIT_RETIRED_KEYS_DIR})"
        )
        self.stdout.write(f"new key {rotation.new_key_id}")
        if rotation.first_checkpoint_of_new_key is not None:
            self.stdout.write(
                f"checkpoint #{rotation.first_checkpoint_of_new_key.number} of head "
                f"#{rotation.first_checkpoint_of_new_key.seq} signed by the new key"
            )
