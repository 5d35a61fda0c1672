"""Verify the decision record (hash chain, record signatures, signed checkpoints), or an exported audit bundle;
exit status 1 on any problem. An intact chain gets a new signed checkpoint of its head."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from approvals.audit.checkpoints import checkpoint_after_verify, checkpoint_log_path
from approvals.audit.export import bundle_span
from approvals.audit.verify import audit_bundle_verify


class Command(BaseCommand):
    help = (
        "Walk the decision record from the genesis hash, check each record's signature and the signed checkpoints "
        "of the chain head, and name the first problem (exit 1); an intact chain gets a new checkpoint. "
        "With --bundle check an exported bundle offline (signature, records sha256, every row's hash, checkpoints)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--bundle", type=Path, help="An export bundle (.zip) to verify instead of the database.")
        parser.add_argument(
            "--public-key",
            type=Path,
            help="PEM of the server audit key to pin; without it the bundle is checked against the key it carries.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["public_key"] and not options["bundle"]:
            raise CommandError("--public-key only applies to --bundle")
        if options["bundle"]:
            self._verify_bundle(options["bundle"], options["public_key"])
        else:
            self._verify_chain(options["verbosity"])

    def _verify_chain(self, verbosity: int) -> None:
        verdict, checkpoint = checkpoint_after_verify()
        if verdict.ok:
            self.stdout.write(f"decision record: {verdict.length} records, ok, head {verdict.head_hash}")
            if verbosity >= 2:
                pinned = (
                    f"pinned by {verdict.checkpoints} signed checkpoints (latest at #{verdict.checkpoint_seq})"
                    if verdict.checkpoints
                    else "pinned by no signed checkpoint yet"
                )
                self.stdout.write(
                    f"{pinned} in {checkpoint_log_path()}; {verdict.unsigned_legacy} unsigned legacy records"
                )
                if checkpoint is not None:
                    self.stdout.write(f"signed checkpoint #{checkpoint.number} of head #{checkpoint.seq}")
            if verdict.length and not verdict.checkpoints:
                self.stderr.write(
                    "warning: no signed checkpoint existed before this verification, so records deleted from the "
                    f"end of the chain could not have been noticed; one is signed now in {checkpoint_log_path()}"
                )
            return
        if verdict.broken_seq is not None:
            self.stderr.write(
                f"decision record: BROKEN at record #{verdict.broken_seq}: {verdict.problem} "
                f"({verdict.length - 1} records verified before it, last good hash {verdict.head_hash})"
            )
        else:
            self.stderr.write(f"decision record: FAILED: {verdict.problem}")
        for problem in verdict.problems[1:]:
            self.stderr.write(f"  - {problem}")
        sys.exit(1)

    def _verify_bundle(self, bundle_path: Path, public_key_path: Path | None) -> None:
        try:
            trusted_pem = public_key_path.read_bytes() if public_key_path else None
            with bundle_path.open("rb") as bundle:
                verdict = audit_bundle_verify(bundle, trusted_public_key_pem=trusted_pem)
        except OSError as exc:
            raise CommandError(f"cannot read {exc.filename}: {exc.strerror}") from exc
        if not verdict.ok:
            self.stderr.write(f"bundle {bundle_path}: FAILED")
            for problem in verdict.problems:
                self.stderr.write(f"  - {problem}")
            sys.exit(1)
        manifest = verdict.manifest
        self.stdout.write(
            f"bundle {bundle_path}: {verdict.record_count} records ({bundle_span(manifest)}), "
            f"ok, head {verdict.head_hash}"
        )
        self.stdout.write(
            f"exported {manifest['created_at']} by {manifest['exported_by']}, signed by key {verdict.key_id}"
        )
        if not verdict.key_pinned:
            self.stderr.write(
                "warning: checked against the key inside the bundle only; pass --public-key with the server's "
                "audit key (GET /api/v1/audit/public-key/) to prove who signed it"
            )
