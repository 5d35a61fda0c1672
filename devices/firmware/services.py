"""Writes for firmware releases. Every rule about what may become a release lives here."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from approvals.audit.records import record_decision
from devices.firmware.models import FirmwareRelease
from devices.firmware.selectors import release_latest_counters
from devices.firmware.storage import (
    ReceivedArtifact,
    artifact_discard,
    artifact_store,
    receive_stream,
    release_temp,
    validate_artifact_name,
)
from devices.firmware.validators import (
    normalize_source_revision,
    validate_builder,
    validate_sbom_ref,
    validate_source_revision,
)
from devices.models import HardwareModel
from devices.validators import validate_semver
from ota_project.errors import InvalidInput, NotPermitted
from ota_project.roles import Role, has_role

RELEASE_COUNTER_MAX = 2**31 - 1  # PositiveIntegerField is a 32-bit integer on every backend
HARDWARE_MODEL_NAME_RE = re.compile(r"\A[-a-zA-Z0-9_]{1,64}\Z")
NOTES_MAX_LENGTH = 10_000


def _messages(exc: ValidationError) -> list[str]:
    return [str(message) for message in exc.messages]


def _check(errors: dict[str, list[str]], field: str, validator: Any, value: Any) -> None:
    try:
        validator(value)
    except ValidationError as exc:
        errors.setdefault(field, []).extend(_messages(exc))


def _hardware_model_names(hardware_models: Sequence[str], errors: dict[str, list[str]]) -> list[str]:
    """The distinct names in the order given; format errors go to `errors`."""
    names: list[str] = []
    for name in hardware_models:
        if not isinstance(name, str) or not HARDWARE_MODEL_NAME_RE.match(name):
            errors.setdefault("hardware_models", []).append(f"{name!r} is not a hardware model name.")
        elif name not in names:
            names.append(name)
    if not hardware_models:
        errors.setdefault("hardware_models", []).append("Name at least one compatible hardware model.")
    return names


def _refuse(errors: dict[str, list[str]], code: str = "invalid") -> InvalidInput:
    field, messages = next(iter(errors.items()))
    return InvalidInput(f"{field}: {messages[0]}", fields=errors, code=code)


@transaction.atomic
def release_create(
    *,
    actor: User,
    version: str,
    release_counter: int,
    hardware_models: Sequence[str],
    received: ReceivedArtifact,
    artifact_name: str,
    source_revision: str,
    builder: str,
    sbom_ref: str = "",
    notes: str = "",
) -> FirmwareRelease:
    """Create a release from an image the server hashed itself; only release engineers (requester role) may.

    Enforces: semantic version, unique version, known hardware models, a release counter no lower than
    any existing release's counter for each listed hardware model (a security epoch: anti-rollback), build provenance (git revision,
    builder, optional SBOM reference) and an allow-listed artifact name. Identical images share one stored file.
    Refusals write nothing: no release row, no artifact row, no file in the store, no decision record.
    """
    if not has_role(actor, Role.REQUESTER):
        raise NotPermitted("Only release engineers (role requester) may create firmware releases.")

    errors: dict[str, list[str]] = {}
    _check(errors, "version", validate_semver, version)
    if isinstance(release_counter, bool) or not isinstance(release_counter, int):
        errors["release_counter"] = ["The release counter must be a whole number."]
    elif not 1 <= release_counter <= RELEASE_COUNTER_MAX:
        errors["release_counter"] = [f"The release counter must be between 1 and {RELEASE_COUNTER_MAX}."]
    names = _hardware_model_names(hardware_models, errors)
    _check(errors, "artifact_name", validate_artifact_name, artifact_name)
    source_revision = normalize_source_revision(source_revision) if isinstance(source_revision, str) else ""
    _check(errors, "source_revision", validate_source_revision, source_revision)
    builder = builder.strip() if isinstance(builder, str) else ""
    _check(errors, "builder", validate_builder, builder)
    _check(errors, "sbom_ref", validate_sbom_ref, sbom_ref)
    if not isinstance(notes, str) or len(notes) > NOTES_MAX_LENGTH or "\x00" in notes:
        errors["notes"] = [f"Notes are text of at most {NOTES_MAX_LENGTH} characters."]
    if errors:
        raise _refuse(errors)

    # Lock the hardware model rows, always in pk order (no deadlocks between overlapping model sets). Concurrent
    # creates for a shared model queue here, so the counter check below sees every committed release.
    # NO KEY UPDATE does not block devices being inserted with these models (their FK takes KEY SHARE).
    models = list(HardwareModel.objects.select_for_update(no_key=True).filter(name__in=names).order_by("pk"))
    missing = sorted(set(names) - {model.name for model in models})
    if missing:
        raise _refuse({"hardware_models": [f"Unknown hardware model: {name}." for name in missing]})

    if FirmwareRelease.objects.filter(version=version).exists():
        raise _refuse({"version": [f"Release {version} already exists."]}, code="version_exists")

    latest = release_latest_counters(models)
    # The counter is a security epoch: it stays the same for an ordinary release, rises with a security fix, and
    # never falls below the highest one a hardware model has (equal counters let an old image be re-released as
    # the rollback target of a newer one).
    too_low = [
        f"Must be at least {latest[model.pk]}, the highest release counter for {model.name}."
        for model in models
        if model.pk in latest and release_counter < latest[model.pk]
    ]
    if too_low:
        raise _refuse({"release_counter": too_low}, code="counter_not_increasing")

    stored = artifact_store(received=received)
    try:
        try:
            # A savepoint, so that a concurrent create of the same version (unique index) reads as a refusal.
            with transaction.atomic():
                release = FirmwareRelease.objects.create(
                    version=version,
                    release_counter=release_counter,
                    artifact=stored.artifact,
                    artifact_name=artifact_name,
                    source_revision=source_revision,
                    builder=builder,
                    sbom_ref=sbom_ref,
                    notes=notes,
                    created_by=actor,
                )
        except IntegrityError:
            if FirmwareRelease.objects.filter(version=version).exists():
                raise _refuse({"version": [f"Release {version} already exists."]}, code="version_exists") from None
            raise
        release.hardware_models.set(models)
        record_decision(
            actor=actor,
            action="releases.create",
            object_type="firmware_release",
            object_id=release.pk,
            after={
                "version": version,
                "counter": release_counter,
                "sha256": stored.artifact.sha256,
                "size": stored.artifact.size_bytes,
                "hardware_models": sorted(model.name for model in models),
            },
        )
    except BaseException:
        # The transaction rolls back the rows; the file this call placed must go with them.
        artifact_discard(stored)
        raise
    return release


def release_create_from_chunks(*, actor: User, chunks: Iterable[bytes], **fields: Any) -> FirmwareRelease:
    """Hash `chunks` into a temp file as they arrive (size-limited), then `release_create` from it; the temp file is
    always removed (commands, the demo and the drills; the API streams through its upload handler instead)."""
    received = receive_stream(chunks, max_bytes=settings.ARTIFACT_MAX_BYTES)
    try:
        return release_create(actor=actor, received=received, **fields)
    finally:
        release_temp(received)
