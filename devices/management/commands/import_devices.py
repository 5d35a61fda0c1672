"""python manage.py import_devices FILE [--format csv|json] [--mode create|upsert] [--actor USERNAME]"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.importer import FORMATS, MAX_IMPORT_BYTES, MODES, import_upload
from ota_project.errors import DomainError


class Command(BaseCommand):
    help = (
        "Import devices from a CSV (header row; tags and network_capabilities separated by ';') or JSON file. "
        "Every row is checked first; on any error the errors are printed, nothing is written and the exit status is 1."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path)
        parser.add_argument("--format", choices=FORMATS, dest="file_format", help="Default: from the extension.")
        parser.add_argument("--mode", choices=MODES, default="create", help="upsert updates existing serials.")
        parser.add_argument("--actor", help="Username recorded as the one who imported (default: system).")

    def handle(self, *args: Any, file: Path, file_format: str | None, mode: str, actor: str | None, **options: Any):
        user = None
        if actor:
            user = get_user_model().objects.filter(username=actor, is_active=True).first()
            if user is None:
                raise CommandError(f"No active user named {actor!r}.")
        if not file.is_file():
            raise CommandError(f"{file}: no such file.")
        if file.stat().st_size > MAX_IMPORT_BYTES:
            raise CommandError(f"{file}: larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MiB; split it.")
        try:
            with file.open("rb") as upload:
                report = import_upload(actor=user, upload=upload, file_format=file_format, mode=mode)
        except DomainError as error:
            for name, problems in error.fields.items():
                for problem in problems if isinstance(problems, list) else [problems]:
                    self.stderr.write(f"{name}: {problem}")
            raise CommandError(f"{file}: {error.message} Nothing was imported.") from None
        if not report.ok:
            for problem in report.errors:
                self.stderr.write(f"row {problem['row']}: {problem['field']}: {problem['message']}")
            raise CommandError(f"{file}: {report.error_count} error(s) in {report.rows} row(s); nothing was imported.")
        self.stdout.write(
            self.style.SUCCESS(
                f"Imported {report.rows} row(s) from {file} ({report.format}, {report.mode}): "
                f"{report.created} created, {report.updated} updated. sha256 {report.sha256}"
            )
        )
