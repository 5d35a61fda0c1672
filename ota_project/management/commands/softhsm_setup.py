"""`python manage.py softhsm_setup`: the development/CI SoftHSM2 token in .data/softhsm/ (idempotent)."""

from __future__ import annotations

import subprocess
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from ota_project.hsm.softhsm import softhsm_setup
from ota_project.hsm.token import TokenError


class Command(BaseCommand):
    help = (
        "Set up the SoftHSM2 token the signing keys live in during development and CI: configuration at "
        "SOFTHSM2_CONF (default .data/softhsm/softhsm2.conf), token OTA_PKCS11_TOKEN initialised once with generated "
        "PINs in 0600 files beside it. Does nothing when OTA_PKCS11_MODULE is not SoftHSM2 (a real HSM)."
    )
    requires_system_checks: list[str] = []  # runs before the database exists

    def handle(self, *args: Any, **options: Any) -> None:
        if "softhsm" not in settings.PKCS11_MODULE:
            self.stdout.write(f"OTA_PKCS11_MODULE is {settings.PKCS11_MODULE}, not SoftHSM2: nothing to set up")
            return
        try:
            token = softhsm_setup(settings.SOFTHSM2_CONF.parent, settings.PKCS11_TOKEN)
        except (TokenError, subprocess.CalledProcessError, OSError) as exc:
            raise CommandError(f"cannot set up the SoftHSM2 token: {exc}") from exc
        if token.conf != settings.SOFTHSM2_CONF:
            raise CommandError(f"SOFTHSM2_CONF must be named softhsm2.conf (set up {token.conf})")
        if not settings.PKCS11_PIN and token.pin_file != settings.PKCS11_PIN_FILE:
            self.stderr.write(f"note: the token's PIN is in {token.pin_file}; set OTA_PKCS11_PIN_FILE to it")
        self.stdout.write(f"SoftHSM2 token {token.token_label!r} ready (SOFTHSM2_CONF={token.conf})")
