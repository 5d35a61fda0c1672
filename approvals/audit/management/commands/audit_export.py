"""Export the decision record (or a range of it) as a signed ZIP bundle; the export is itself recorded."""

from __future__ import annotations

import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from approvals.audit.export import EXPORT_FORMATS, audit_export_write, bundle_span
from ota_project.errors import InvalidInput


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise ValueError(value)
    return number


def _aware_datetime(value: str) -> datetime:
    parsed = parse_datetime(value)
    if parsed is None:
        raise ValueError(value)
    return parsed if timezone.is_aware(parsed) else timezone.make_aware(parsed, UTC)


_positive_int.__name__ = "whole number from 1"
_aware_datetime.__name__ = "ISO 8601 date-time"


class Command(BaseCommand):
    help = (
        "Write a signed export bundle (records.jsonl|records.csv, manifest.json, manifest.sig, "
        "audit_public_key.pem) of the decision record, and append an audit.export record naming it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--format", choices=EXPORT_FORMATS, default="jsonl", dest="fmt")
        parser.add_argument("--output", type=Path, required=True, help="Path of the .zip to write.")
        parser.add_argument("--from-seq", type=_positive_int, help="First record to export (inclusive).")
        parser.add_argument("--to-seq", type=_positive_int, help="Last record to export (inclusive).")
        parser.add_argument("--since", type=_aware_datetime, help="Records created at or after (ISO 8601, UTC).")
        parser.add_argument("--until", type=_aware_datetime, help="Records created before (ISO 8601, UTC).")
        parser.add_argument("--actor", help="Username the export is recorded under (default: system:audit_export).")
        parser.add_argument("--reason", default="", help="Why the export is made (kept in the record).")
        parser.add_argument("--force", action="store_true", help="Replace an existing output file.")

    def handle(self, *args: Any, **options: Any) -> None:
        output: Path = options["output"]
        if output.exists() and not options["force"]:
            raise CommandError(f"{output} exists; pass --force to replace it")
        actor = None
        if options["actor"]:
            user_model = get_user_model()
            try:
                actor = user_model.objects.get(**{user_model.USERNAME_FIELD: options["actor"], "is_active": True})
            except user_model.DoesNotExist as exc:
                raise CommandError(f"no active user named {options['actor']!r}") from exc

        # Written next to the target and renamed into place, so a failed export never leaves a partial bundle.
        output.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
        try:
            with os.fdopen(fd, "wb") as temp_file:
                result = audit_export_write(
                    temp_file,
                    actor=actor,
                    fmt=options["fmt"],
                    from_seq=options["from_seq"],
                    to_seq=options["to_seq"],
                    since=options["since"],
                    until=options["until"],
                    reason=options["reason"],
                )
                temp_file.flush()
                os.fsync(temp_file.fileno())
            os.replace(temp_name, output)
        except InvalidInput as exc:
            raise CommandError(f"{exc.message} {exc.fields}") from exc
        finally:
            Path(temp_name).unlink(missing_ok=True)

        manifest = result.manifest
        chain = manifest["chain_at_export"]
        self.stdout.write(
            f"exported {manifest['record_count']} records ({bundle_span(manifest)}) as {manifest['format']} to {output}"
        )
        self.stdout.write(f"head {manifest['head_hash'] or '(none: no records exported)'}")
        if chain["ok"]:
            self.stdout.write(f"chain at export: ok, {chain['length']} records")
        else:
            self.stdout.write(f"chain at export: BROKEN at record #{chain['broken_seq']}: {chain['problem']}")
        self.stdout.write(f"manifest sha256 {result.manifest_sha256}, signed by key {manifest['key_id']} (ed25519)")
        self.stdout.write(f"recorded as record #{result.record.seq} ({result.record.action})")
