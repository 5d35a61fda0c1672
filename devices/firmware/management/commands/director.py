"""`python manage.py director draft-root|sign-root|init|dev-ceremony|status`: the director's root.

As for the image repository: `draft-root` (server) writes director root v1 from the registered director-root and
director keys, `sign-root` (the ceremony machine, OTA_PKCS11_OFFLINE_TOKEN/PIN, no database needed) signs it with
the offline director-root key, `init --root` (server) checks and keeps it. `dev-ceremony` does all of it on the
development SoftHSM2 offline token under .data/ (development only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.firmware.director.ceremony import director_dev_ceremony
from devices.firmware.director.services import (
    director_init,
    director_root_draft,
    director_root_latest,
    director_root_sign_offline,
)
from devices.firmware.management.root_files import read_root
from ota_project.command_support import active_user, refusal_text
from ota_project.errors import DomainError
from ota_project.hsm.token import TokenError, offline_token


class Command(BaseCommand):
    help = (
        "The director's root: draft-root, sign-root (on the offline token), init (keep a signed root v1), "
        "dev-ceremony (development only: all of it on a SoftHSM2 token under .data/), status."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        draft = actions.add_parser("draft-root", help="Write director root v1, unsigned, from the registry's keys.")
        draft.add_argument("--out", type=Path, required=True)
        sign = actions.add_parser("sign-root", help="Sign a drafted director root with the offline token's key.")
        sign.add_argument("--in", dest="source", type=Path, required=True)
        sign.add_argument("--out", type=Path, required=True)
        init = actions.add_parser("init", help="Start the director from a signed root v1.")
        init.add_argument("--actor", required=True, help="Username of the security officer.")
        init.add_argument("--root", type=Path, help="The signed root (else signed here on the offline token).")
        ceremony = actions.add_parser("dev-ceremony", help="Development only: root on a SoftHSM2 token in .data/.")
        ceremony.add_argument("--actor", required=True, help="Username of the security officer.")
        actions.add_parser("status", help="The director root's version and expiry.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "draft-root":
                options["out"].write_bytes(director_root_draft().to_bytes())
                self.stdout.write(f"director root v1 draft written to {options['out']}; sign it with sign-root")
            elif action == "sign-root":
                root = director_root_sign_offline(read_root(options["source"]), token=offline_token())
                options["out"].write_bytes(root.to_bytes())
                self.stdout.write(f"signed director root written to {options['out']}")
            elif action == "init":
                actor = active_user(options["actor"])
                root = (
                    read_root(options["root"])
                    if options["root"]
                    else director_root_sign_offline(director_root_draft(), token=offline_token())
                )
                stored = director_init(actor=actor, root=root)
                self.stdout.write(f"director started: root v{stored.version} sha256 {stored.sha256}")
            elif action == "dev-ceremony":
                self.stderr.write("DEVELOPMENT ONLY: the director root key is made on a SoftHSM2 token in the data dir")
                stored = director_dev_ceremony(actor=active_user(options["actor"]))
                self.stdout.write(f"director started: root v{stored.version} sha256 {stored.sha256}")
            else:
                latest = director_root_latest()
                self.stdout.write(
                    "director: none (run `director init`)"
                    if latest is None
                    else f"director root v{latest.version} expires {latest.expires:%Y-%m-%d %H:%M} UTC"
                )
        except DomainError as exc:
            raise CommandError(refusal_text(exc)) from exc
        except TokenError as exc:
            raise CommandError(str(exc)) from exc
