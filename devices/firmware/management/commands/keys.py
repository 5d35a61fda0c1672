"""`python manage.py keys list|create|import-public|rotate|revoke`: the signing-key registry from the shell."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit.choices import SecurityEventKind
from approvals.audit.keys import public_key_id
from approvals.audit.security import security_event
from devices.firmware.keys.selectors import signing_key_list
from devices.firmware.keys.services import (
    key_create,
    key_generate_offline,
    key_import_public,
    key_revoke,
    key_revoke_and_replace,
    key_rotate,
)
from ota_project.command_support import active_user, refusal_text
from ota_project.errors import DomainError
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import TokenError, TokenPinRefused


class Command(BaseCommand):
    help = (
        "Signing keys, one per role, private halves in the PKCS#11 token: list them; create a role's key in the "
        "server's token (or with --offline on the offline token of a key ceremony, printing its public key); "
        "import-public (register a key made offline); rotate; revoke. Every change is a decision record; only "
        "security officers (--actor) may make one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        actions.add_parser("list", help="Every registered key: role, state, algorithm, location, key id.")

        def person(sub: CommandParser) -> None:
            sub.add_argument("--actor", required=True, help="Username of the security officer doing this.")
            sub.add_argument("--reason", default="", help="Why (kept in the decision record).")

        roles = ", ".join(KeyRole.values)
        create = actions.add_parser("create", help="Create the key of a role.")
        create.add_argument("--role", required=True, help=f"One of: {roles}.")
        create.add_argument(
            "--algorithm",
            default="",
            help="ed25519 (default) or ecdsa-p256; ml-dsa-65 (the default) for the *-ml-dsa roles of hybrid mode.",
        )
        create.add_argument(
            "--offline",
            action="store_true",
            help="Generate on the offline token (OTA_PKCS11_OFFLINE_TOKEN/PIN), never the server's; registers "
            "nothing: carry the public key to the server and run import-public.",
        )
        create.add_argument("--out", type=Path, help="With --offline: write the public key (PEM) here.")
        create.add_argument("--actor", help="Username of the security officer (required unless --offline).")
        create.add_argument("--reason", default="", help="Why (kept in the decision record).")
        imported = actions.add_parser("import-public", help="Register the public key of a key made offline.")
        imported.add_argument("--role", required=True, help=f"One of: {roles}.")
        imported.add_argument("--public-key", required=True, type=Path, help="PEM file of the public key.")
        person(imported)
        rotate = actions.add_parser("rotate", help="Replace the active key of a role; the old one is retired.")
        rotate.add_argument("--role", required=True, help=f"One of: {roles}.")
        rotate.add_argument("--public-key", type=Path, help="Offline roles: PEM file of the new key's public half.")
        person(rotate)
        revoke = actions.add_parser("revoke", help="Revoke a key (compromised or withdrawn).")
        revoke.add_argument("--key-id", required=True, help="The key id as `keys list` shows it.")
        revoke.add_argument(
            "--replace",
            action="store_true",
            help="Online roles: give the role a new key in the same step (then image_repository rotate-root).",
        )
        person(revoke)

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "list":
            self._list()
            return
        if action == "create" and options["offline"]:
            self._create_offline(options)
            return
        if not options.get("actor"):
            raise CommandError("--actor is required: the security officer the decision is recorded under")
        actor = active_user(options["actor"])
        try:
            if action == "create":
                key = key_create(
                    actor=actor, role=options["role"], algorithm=options["algorithm"], reason=options["reason"]
                )
                self.stdout.write(f"created {key.role} key {key.key_id} ({key.algorithm}) in the server's token")
                if key.role == KeyRole.AUDIT_CHECKPOINT:
                    self.stdout.write(f"the decision record names it {public_key_id(key.public_key_pem)}")
            elif action == "import-public":
                key = key_import_public(
                    actor=actor,
                    role=options["role"],
                    public_key=self._read(options["public_key"]),
                    reason=options["reason"],
                )
                self.stdout.write(f"registered {key.role} key {key.key_id} ({key.algorithm}, offline)")
            elif action == "rotate":
                public_key = self._read(options["public_key"]) if options["public_key"] else ""
                key = key_rotate(actor=actor, role=options["role"], public_key=public_key, reason=options["reason"])
                self.stdout.write(f"rotated {key.role}: new key {key.key_id}; the previous key is retired")
            elif options["replace"]:
                key, replacement = key_revoke_and_replace(
                    actor=actor, key_id=options["key_id"], reason=options["reason"]
                )
                self.stdout.write(
                    f"revoked {key.role} key {key.key_id}; new {replacement.role} key {replacement.key_id}. "
                    "Next: image_repository draft-root --rotation, sign it with the root keys, rotate-root."
                )
            else:
                key = key_revoke(actor=actor, key_id=options["key_id"], reason=options["reason"])
                self.stdout.write(f"revoked {key.role} key {key.key_id}")
        except DomainError as exc:
            raise CommandError(refusal_text(exc)) from exc
        except TokenPinRefused as exc:
            security_event(
                kind=SecurityEventKind.HSM_PIN_REFUSED, source="keys", message=str(exc), actor=actor, subject=action
            )
            raise CommandError(str(exc)) from exc
        except TokenError as exc:
            raise CommandError(str(exc)) from exc

    def _list(self) -> None:
        keys = list(signing_key_list())
        if not keys:
            self.stdout.write("no registered keys")
            return
        for key in keys:
            by = key.created_by.get_username()
            self.stdout.write(
                f"{key.role:<26} {key.state:<8} {key.algorithm:<10} {key.location:<12} {key.key_id} "
                f"created {key.created_at:%Y-%m-%d %H:%M} by {by}"
            )

    def _create_offline(self, options: dict[str, Any]) -> None:
        try:
            key = key_generate_offline(role=options["role"], algorithm=options["algorithm"])
        except DomainError as exc:
            raise CommandError(refusal_text(exc)) from exc
        except TokenError as exc:  # no security event: an offline machine has no server to record it on
            raise CommandError(str(exc)) from exc
        if options["out"]:
            options["out"].write_text(key.public_key_pem)
        else:
            self.stdout.write(key.public_key_pem, ending="")
        self.stderr.write(
            f"generated {options['role']} key {key.key_id} ({key.algorithm}) on the offline token; register it on the "
            "server with: manage.py keys import-public"
        )

    def _read(self, path: Path) -> str:
        try:
            return path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {path}: {exc}") from exc
