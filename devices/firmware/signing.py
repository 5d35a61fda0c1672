"""The approval-gated signing step: the only way a release's image enters the signed image targets.

`release_sign` re-checks, itself and against the database, what the CAB approved: the change naming the release is
approved under its policy by approvals bound to its current revision, exactly this artifact sha256 and this plan
hash (approvals' own rule, `change_assert_approved`), and the artifact's stored bytes still hash to that sha256.
Anything else is refused, recorded as a security event, and publishes nothing. This room sits above approvals (it
reads their rule) and below rollouts (which sign at rollout start): see the rooms map in pyproject.toml.
"""

from __future__ import annotations

import hashlib

from django.contrib.auth.models import User
from django.db import transaction

from approvals.audit.choices import SecurityEventKind
from approvals.audit.records import record_decision
from approvals.audit.security import security_event
from approvals.models import ChangeRequest
from approvals.selectors import change_plan_hash
from approvals.services import change_assert_approved
from devices.firmware.models import FirmwareRelease
from devices.firmware.repository.models import ImageTarget
from devices.firmware.repository.services import image_targets_add
from devices.firmware.storage import CHUNK_SIZE, artifact_open
from ota_project.errors import Conflict, DomainError

SOURCE = "release_sign"


def _stored_bytes_refusal(change: ChangeRequest, release: FirmwareRelease | None = None) -> DomainError | None:
    """The artifact file, read now, must still be the approved image (same sha256 and size): the change's release,
    or `release` (its rollback release)."""
    release = release or change.release
    artifact = release.artifact
    digest, size = hashlib.sha256(), 0
    try:
        with artifact_open(artifact.sha256) as handle:
            while chunk := handle.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        return Conflict(f"The artifact of release {release.version} cannot be read: {exc.strerror}.")
    if (digest.hexdigest(), size) != (artifact.sha256, artifact.size_bytes):
        return Conflict(
            f"The stored artifact of release {release.version} no longer hashes to the approved "
            f"{artifact.sha256}: it changed after approval.",
            code="artifact_changed",
        )
    return None


def release_sign_refusal(change: ChangeRequest) -> DomainError | None:
    """Why the change's release may not be signed into the image targets now (None when it may)."""
    try:
        change_assert_approved(change)
    except DomainError as refusal:
        return refusal
    return _stored_bytes_refusal(change) or _rollback_refusal(change)


def _rollback_refusal(change: ChangeRequest) -> DomainError | None:
    """The rollback release was approved as part of the change: it is signed with it (vehicles verify a rollback
    like any update), so its bytes must be intact too, unless the image targets list it already."""
    rollback = change.rollback_release
    if rollback is None or rollback.pk == change.release_id:
        return None
    listed = ImageTarget.objects.filter(release=rollback).first()
    if listed is not None:
        return None
    return _stored_bytes_refusal(change, rollback)


@transaction.atomic
def release_sign(*, actor: User | None, change: ChangeRequest) -> ImageTarget:
    """Sign the change's release (and its rollback release, approved with it) into the image targets after
    re-checking its approvals and their stored bytes;
    idempotent (an already listed release is kept as it is). A refusal is a security event and changes nothing."""
    change = (
        ChangeRequest.objects.select_for_update(of=("self",))
        .select_related("release__artifact", "rollback_release__artifact")
        .get(pk=change.pk)
    )
    refusal = release_sign_refusal(change)
    if refusal is not None:
        security_event(
            kind=SecurityEventKind.RELEASE_SIGN_REFUSED,
            source=SOURCE,
            message=refusal.message,
            actor=actor,
            subject=f"change:{change.pk} release:{change.release.version} sha256:{change.release.artifact.sha256}",
        )
        raise refusal
    rollback = change.rollback_release
    releases = [change.release] if rollback is None or rollback.pk == change.release_id else [change.release, rollback]
    # One new targets version lists both: the rollback release was approved with the change, and a vehicle verifies
    # a rollback like any update.
    signed = image_targets_add(releases=releases, change_id=change.pk)
    (target, created), rollback_signed = signed[0], signed[1:]
    if created:
        record_decision(
            actor=actor,
            action="release.sign",
            object_type="firmware_release",
            object_id=change.release.pk,
            revision=change.revision,
            after={
                "change": change.pk,
                "version": change.release.version,
                "path": target.path,
                "sha256": target.sha256,
                "length": target.length,
                "hardware_ids": target.hardware_ids,
                "release_counter": target.release_counter,
                "plan_hash": change_plan_hash(change),
                "targets_version": target.targets_version,
            },
        )
    for rollback_target, rollback_created in rollback_signed:
        if rollback_created:
            record_decision(
                actor=actor,
                action="release.sign_rollback",
                object_type="firmware_release",
                object_id=rollback_target.release_id,
                revision=change.revision,
                after={
                    "change": change.pk,
                    "path": rollback_target.path,
                    "sha256": rollback_target.sha256,
                    "length": rollback_target.length,
                    "hardware_ids": rollback_target.hardware_ids,
                    "release_counter": rollback_target.release_counter,
                    "plan_hash": change_plan_hash(change),
                    "targets_version": rollback_target.targets_version,
                },
            )
    return target
