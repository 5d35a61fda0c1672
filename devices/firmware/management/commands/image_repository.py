"""`python manage.py image_repository draft-root|sign-root|init|rotate-root|dev-ceremony|dev-rotate-root|refresh|
expiry-audit|status`: the image repository.

The root is offline: `draft-root` (server) writes root v1 from the registered keys, `sign-root` (the ceremony
machine, OTA_PKCS11_OFFLINE_TOKEN/PIN, no database needed) signs it with the root key of the offline token, `init
--root` (server) checks and publishes it. `init` without --root signs in this process when the offline token is
attached here. `dev-ceremony` does all of it on a SoftHSM2 token under .data/ for development only.

Root rotation: `draft-root --rotation` (server) writes root N+1 from the registry's active keys; `sign-root --trusted
N.root.json` on each ceremony machine adds the signatures of the old and new root keys its token holds; `rotate-root
--root` (server) checks (N+1, both thresholds, the registry's keys), publishes it and re-signs targets, snapshot and
timestamp with the keys it names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit.choices import SecurityEventKind
from approvals.audit.security import security_event
from devices.firmware.management.root_files import read_root
from devices.firmware.repository.ceremony import dev_ceremony, dev_rotate_root
from devices.firmware.repository.expiry import expiry_audit
from devices.firmware.repository.models import ImageRole
from devices.firmware.repository.selectors import expiry_alert_open_list, image_metadata_latest
from devices.firmware.repository.services import (
    image_repository_init,
    image_repository_refresh,
    image_repository_root,
    image_repository_rotate_root,
    root_draft,
    root_draft_rotation,
    root_is_hybrid,
    root_sign_offline,
    root_sign_rotation,
)
from ota_project.command_support import active_user, refusal_text
from ota_project.errors import DomainError
from ota_project.hsm.token import TokenError, TokenPinRefused, offline_token


class Command(BaseCommand):
    help = (
        "The TUF image repository: draft-root, sign-root (on the offline token), init (publish a signed root v1 "
        "with empty targets), dev-ceremony (development only: all of it on a SoftHSM2 token under .data/), "
        "refresh (re-sign timestamp/snapshot near expiry), status."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        actions = parser.add_subparsers(dest="action", required=True)
        draft = actions.add_parser("draft-root", help="Write root v1, unsigned, from the registry's active keys.")
        draft.add_argument("--out", type=Path, required=True)
        draft.add_argument(
            "--rotation", action="store_true", help="Draft root N+1 of the published root N (a root rotation)."
        )
        mode = draft.add_mutually_exclusive_group()
        mode.add_argument("--hybrid", action="store_true", default=None, help="Every role also needs its ML-DSA key.")
        mode.add_argument("--classical", dest="hybrid", action="store_false", help="Classical keys only.")
        sign = actions.add_parser("sign-root", help="Sign a drafted root with the offline token's root key.")
        sign.add_argument("--in", dest="source", type=Path, required=True)
        sign.add_argument("--out", type=Path, required=True)
        sign.add_argument(
            "--trusted", type=Path, help="Rotation: the published root N; the old root keys on this token sign too."
        )
        rotate = actions.add_parser("rotate-root", help="Publish root N+1 and re-sign the online roles with it.")
        rotate.add_argument("--actor", required=True, help="Username of the security officer.")
        rotate.add_argument("--root", type=Path, help="The signed root N+1 (else signed here on the offline token).")
        rotate.add_argument("--reason", default="", help="Why (kept in the decision record).")
        dev_rotate = actions.add_parser(
            "dev-rotate-root", help="Development only: draft, sign (dev offline token) and publish root N+1."
        )
        dev_rotate.add_argument("--actor", required=True, help="Username of the security officer.")
        dev_rotate.add_argument("--reason", default="", help="Why (kept in the decision record).")
        actions.add_parser("expiry-audit", help="Flag keys and metadata close to expiry (what the schedule runs).")
        init = actions.add_parser("init", help="Start the repository from a signed root v1.")
        init.add_argument("--actor", required=True, help="Username of the security officer.")
        init.add_argument("--root", type=Path, help="The signed root (else signed here on the offline token).")
        ceremony = actions.add_parser("dev-ceremony", help="Development only: root on a SoftHSM2 token in .data/.")
        ceremony.add_argument("--actor", required=True, help="Username of the security officer.")
        actions.add_parser("refresh", help="Re-sign timestamp and snapshot when they are near expiry.")
        actions.add_parser("status", help="The newest version of each role and when it expires.")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        try:
            if action == "draft-root":
                drafted = (
                    root_draft_rotation(hybrid=options["hybrid"])
                    if options["rotation"]
                    else root_draft(hybrid=options["hybrid"])
                )
                options["out"].write_bytes(drafted.to_bytes())
                mode = "hybrid" if root_is_hybrid(drafted.signed) else "classical"
                self.stdout.write(
                    f"root v{drafted.signed.version} draft ({mode}) written to {options['out']}; sign it with sign-root"
                )
            elif action == "sign-root":
                draft = read_root(options["source"])
                root = (
                    root_sign_rotation(draft, trusted=read_root(options["trusted"]), token=offline_token())
                    if options["trusted"]
                    else root_sign_offline(draft, token=offline_token())
                )
                options["out"].write_bytes(root.to_bytes())
                self.stdout.write(f"signed root v{root.signed.version} written to {options['out']}")
            elif action == "rotate-root":
                actor = active_user(options["actor"])
                root = (
                    read_root(options["root"])
                    if options["root"]
                    else root_sign_rotation(
                        root_draft_rotation(), trusted=image_repository_root(), token=offline_token()
                    )
                )
                stored = image_repository_rotate_root(actor=actor, root=root, reason=options["reason"])
                self.stdout.write(f"root rotated: v{stored.version} sha256 {stored.sha256}; online roles re-signed")
            elif action == "dev-rotate-root":
                self.stderr.write("DEVELOPMENT ONLY: the root keys are on a SoftHSM2 token under the data dir")
                stored = dev_rotate_root(actor=active_user(options["actor"]), reason=options["reason"])
                self.stdout.write(f"root rotated: v{stored.version} sha256 {stored.sha256}; online roles re-signed")
            elif action == "expiry-audit":
                findings = expiry_audit()
                for finding in findings:
                    self.stdout.write(f"{finding.severity:<8} {finding.subject:<40} {finding.message}")
                self.stdout.write(f"{len(findings)} finding(s)")
            elif action == "init":
                actor = active_user(options["actor"])
                root = (
                    read_root(options["root"])
                    if options["root"]
                    else root_sign_offline(root_draft(), token=offline_token())
                )
                stored = image_repository_init(actor=actor, root=root)
                self.stdout.write(f"image repository started: root v{stored.version} sha256 {stored.sha256}")
            elif action == "dev-ceremony":
                self.stderr.write("DEVELOPMENT ONLY: the root key is made on a SoftHSM2 token under the data dir")
                stored = dev_ceremony(actor=active_user(options["actor"]))
                self.stdout.write(f"image repository started: root v{stored.version} sha256 {stored.sha256}")
            elif action == "refresh":
                resigned = image_repository_refresh()
                self.stdout.write("re-signed: " + (", ".join(resigned) or "nothing (not near expiry)"))
            else:
                self._status()
        except DomainError as exc:
            raise CommandError(refusal_text(exc)) from exc
        except TokenPinRefused as exc:
            actor_name = options.get("actor")
            person = get_user_model().objects.filter(username=actor_name).first() if actor_name else None
            security_event(
                kind=SecurityEventKind.HSM_PIN_REFUSED,
                source="image_repository",
                message=str(exc),
                actor=person,
                subject=action,
            )
            raise CommandError(str(exc)) from exc
        except TokenError as exc:
            raise CommandError(str(exc)) from exc

    def _status(self) -> None:
        for role in ImageRole.values:
            latest = image_metadata_latest(role)
            if latest is None:
                self.stdout.write(f"{role:<10} none")
            else:
                self.stdout.write(f"{role:<10} v{latest.version:<6} expires {latest.expires:%Y-%m-%d %H:%M} UTC")
        if image_metadata_latest(ImageRole.ROOT) is not None:
            mode = "hybrid (classical + ML-DSA-65)" if root_is_hybrid(image_repository_root().signed) else "classical"
            self.stdout.write(f"mode       {mode}")
        for alert in expiry_alert_open_list():
            self.stdout.write(f"alert      {alert.severity}: {alert.message}")
