"""Create a firmware release from an image on disk (for CI pipelines), under the same rules as the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser

from devices.firmware.services import release_create_from_chunks
from devices.firmware.storage import iter_file
from ota_project.errors import DomainError


class Command(BaseCommand):
    help = (
        "Create a firmware release from FILE: hashes the image while copying it into the upload area, then calls "
        "the release service (role, semver, anti-rollback counter, provenance, decision record). Exit 1 on refusal."
    )

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # `--version` is the release's version here, not Django's version banner.
        kwargs.setdefault("conflict_handler", "resolve")
        return super().create_parser(prog_name, subcommand, **kwargs)

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("file", type=Path, help="Path of the firmware image.")
        parser.add_argument("--version", dest="release_version", required=True, help="Semantic version, e.g. 2.4.1.")
        parser.add_argument("--counter", type=int, required=True, help="Anti-rollback release counter.")
        parser.add_argument(
            "--hardware-model",
            dest="hardware_models",
            action="append",
            required=True,
            help="Compatible hardware model name (repeat for several).",
        )
        parser.add_argument("--source-revision", required=True, help="Git commit the image was built from.")
        parser.add_argument("--builder", required=True, help="CI job or host that built the image.")
        parser.add_argument("--sbom-ref", default="", help="SBOM URI or sha256:<hex>.")
        parser.add_argument("--notes", default="", help="Free-text release notes.")
        parser.add_argument("--name", default=None, help="Artifact file name to record (default: FILE's name).")
        parser.add_argument("--actor", required=True, help="Username of the release engineer (role requester).")

    def handle(self, *args: Any, **options: Any) -> None:
        path: Path = options["file"]
        if not path.is_file():
            raise CommandError(f"{path}: not a readable file")
        actor = get_user_model().objects.filter(username=options["actor"], is_active=True).first()
        if actor is None:
            raise CommandError(f"No active user named {options['actor']!r}")
        try:
            with path.open("rb") as source:
                # Hash the bytes as they are copied, so the digest describes exactly what will be stored.
                release = release_create_from_chunks(
                    actor=actor,
                    chunks=iter_file(source),
                    version=options["release_version"],
                    release_counter=options["counter"],
                    hardware_models=options["hardware_models"],
                    artifact_name=options["name"] or path.name,
                    source_revision=options["source_revision"],
                    builder=options["builder"],
                    sbom_ref=options["sbom_ref"],
                    notes=options["notes"],
                )
        except DomainError as exc:
            raise CommandError(self._describe(exc)) from exc
        except OSError as exc:
            raise CommandError(f"{path}: {exc.strerror or exc}") from exc
        self.stdout.write(
            self.style.SUCCESS(
                f"Created release {release.version} (id {release.pk}, counter {release.release_counter}) "
                f"sha256 {release.artifact.sha256} size {release.artifact.size_bytes}"
            )
        )

    @staticmethod
    def _describe(exc: DomainError) -> str:
        detail = f" {json.dumps(exc.fields, sort_keys=True)}" if exc.fields else ""
        return f"Refused ({exc.code}): {exc.message}{detail}"
