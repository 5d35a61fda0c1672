"""Build, sign and store the image repository's metadata (python-tuf's Metadata API), keys in the token.

Rules: root is signed only by the offline root key (`root_sign_offline`, in a key ceremony) and must list exactly
the registry's active keys; targets needs 2 distinct keys (targets-release and targets-security-officer, threshold
2); every new metadata version is checked against the stored root before it is kept, so a key the root does not
trust signs nothing. Writes are serialised by one advisory lock, stored in the caller's transaction and written to
the static tree after it commits (devices.firmware.repository.files).
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone
from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from approvals.audit.choices import SecurityEventKind
from approvals.audit.records import record_decision
from approvals.audit.security import security_event
from devices.firmware.keys.selectors import signing_key_active
from devices.firmware.keys.services import key_manager_check
from devices.firmware.models import FirmwareRelease
from devices.firmware.repository.files import image_files_write
from devices.firmware.repository.models import ImageMetadata, ImageRole, ImageTarget
from devices.firmware.repository.selectors import image_metadata_latest, image_repository_initialised
from devices.firmware.repository.signers import role_signer, token_key_signer, tuf_key
from ota_project.errors import Conflict, InvalidInput
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import TokenConfig, role_label, token_keys

# Which registry roles sign each TUF role, and how many of them must.
ROLE_KEYS: dict[str, tuple[KeyRole, ...]] = {
    ImageRole.ROOT: (KeyRole.ROOT,),
    ImageRole.TARGETS: (KeyRole.TARGETS_RELEASE, KeyRole.TARGETS_SECURITY_OFFICER),
    ImageRole.SNAPSHOT: (KeyRole.SNAPSHOT,),
    ImageRole.TIMESTAMP: (KeyRole.TIMESTAMP,),
}
SOURCE = "image_repository"
THRESHOLDS: dict[str, int] = {ImageRole.ROOT: 1, ImageRole.TARGETS: 2, ImageRole.SNAPSHOT: 1, ImageRole.TIMESTAMP: 1}
_SERIALIZER = JSONSerializer(compact=False)


def _expires(role: str, now: datetime) -> datetime:
    return (now + timedelta(days=settings.IMAGE_REPOSITORY_EXPIRY_DAYS[role])).replace(microsecond=0)


def _lock() -> None:
    """Serialise every write to the image repository (versions must follow each other, one writer at a time)."""
    lock_id = int.from_bytes(hashlib.sha256(b"ota-image-repository").digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])


def _root() -> Metadata[Root]:
    stored = image_metadata_latest(ImageRole.ROOT)
    if stored is None:
        raise Conflict("The image repository has no root yet: run `manage.py image_repository init`.")
    return Metadata[Root].from_bytes(bytes(stored.content))


def root_draft(*, now: datetime | None = None) -> Metadata[Root]:
    """Root v1, unsigned, from the registry's active keys of every role (consistent snapshots, thresholds above)."""
    root = Root(
        version=1,
        expires=_expires(ImageRole.ROOT, now or timezone.now()),
        consistent_snapshot=True,
    )
    for tuf_role, key_roles in ROLE_KEYS.items():
        for key_role in key_roles:
            key = signing_key_active(key_role)
            if key is None:
                raise Conflict(
                    f"Role {key_role} has no active key; the image repository's root needs one.",
                    fields={"role": [f"No active {key_role} key."]},
                )
            root.add_key(tuf_key(key), tuf_role)
        root.roles[tuf_role].threshold = THRESHOLDS[tuf_role]
    return Metadata(root)


def root_sign_offline(root: Metadata[Root], *, token: TokenConfig) -> Metadata[Root]:
    """Sign a root with the root keys it names that `token` holds (the key ceremony, on the offline token; no
    database needed); returns it signed. Refused when the token holds none of them."""
    named = set(root.signed.roles[Root.type].keyids)
    keys = [key for key in token_keys(label=role_label(KeyRole.ROOT), token=token) if key.key_id in named]
    if not keys:
        raise Conflict(f"Token {token.token_label!r} holds none of the root keys this root names: {sorted(named)}.")
    for key in keys:
        root.sign(token_key_signer(key, token), append=True)
    return root


def _store(metadata: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp]) -> ImageMetadata:
    content = metadata.to_bytes(_SERIALIZER)
    return ImageMetadata.objects.create(
        role=metadata.signed.type,
        version=metadata.signed.version,
        content=content,
        sha256=hashlib.sha256(content).hexdigest(),
        expires=metadata.signed.expires,
    )


def _sign_online(
    root: Metadata[Root], metadata: Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp]
) -> ImageMetadata:
    role = metadata.signed.type
    for key_role in ROLE_KEYS[role]:
        metadata.sign(role_signer(key_role), append=True)
    try:
        root.verify_delegate(role, metadata)  # the root's keys and threshold, as any client will check them
    except UnsignedMetadataError as exc:
        # E.g. an online key rotated in the registry that the root does not name yet: nothing is signed by it.
        raise Conflict(
            f"The active {role} keys are not the ones root v{root.signed.version} trusts ({exc}); "
            "sign a new root that names them (a key ceremony) first.",
            code="key_not_in_root",
        ) from exc
    return _store(metadata)


def _next_version(role: str) -> int:
    latest = image_metadata_latest(role)
    return 1 if latest is None else latest.version + 1


def _target_file(target: ImageTarget) -> TargetFile:
    return TargetFile(
        length=target.length,
        hashes={"sha256": target.sha256},
        path=target.path,
        unrecognized_fields={
            "custom": {"hardware_ids": list(target.hardware_ids), "release_counter": target.release_counter}
        },
    )


def _targets_sign(root: Metadata[Root], now: datetime) -> ImageMetadata:
    targets = Targets(
        version=_next_version(ImageRole.TARGETS),
        expires=_expires(ImageRole.TARGETS, now),
        targets={target.path: _target_file(target) for target in ImageTarget.objects.all()},
    )
    return _sign_online(root, Metadata(targets))


def _snapshot_sign(root: Metadata[Root], targets: ImageMetadata, now: datetime) -> ImageMetadata:
    snapshot = Snapshot(
        version=_next_version(ImageRole.SNAPSHOT),
        expires=_expires(ImageRole.SNAPSHOT, now),
        meta={"targets.json": MetaFile(version=targets.version)},
    )
    return _sign_online(root, Metadata(snapshot))


def _timestamp_sign(root: Metadata[Root], snapshot: ImageMetadata, now: datetime) -> ImageMetadata:
    timestamp = Timestamp(
        version=_next_version(ImageRole.TIMESTAMP),
        expires=_expires(ImageRole.TIMESTAMP, now),
        snapshot_meta=MetaFile(
            version=snapshot.version, length=len(bytes(snapshot.content)), hashes={"sha256": snapshot.sha256}
        ),
    )
    return _sign_online(root, Metadata(timestamp))


def _publish_after_commit() -> None:
    # robust: the signed state is committed whatever happens to the files; a failed write is logged and the next
    # refresh (every few minutes) writes the tree again from the rows.
    transaction.on_commit(image_files_write, robust=True)


def _refuse_root(root: Metadata[Root], now: datetime) -> None:
    """A root v1 is kept only as the registry would have drafted it, signed by the root key, and not expired."""
    if not isinstance(root.signed, Root):
        raise InvalidInput("Refused root: not root metadata.", fields={"root": ["Not root metadata."]})
    draft = root_draft(now=now).signed
    signed = root.signed
    problems: list[str] = []
    if signed.version != 1:
        problems.append(f"version {signed.version}, not 1")
    if not signed.consistent_snapshot:
        problems.append("consistent snapshots off")
    if signed.is_expired(now):
        problems.append("already expired")
    for role in ROLE_KEYS:
        if (set(signed.roles[role].keyids), signed.roles[role].threshold) != (
            set(draft.roles[role].keyids),
            draft.roles[role].threshold,
        ):
            problems.append(f"{role} keys or threshold differ from the registry's active keys")
    try:
        root.verify_delegate(Root.type, root)
    except Exception as exc:  # python-tuf raises UnsignedMetadataError, and ValueError for malformed signatures
        problems.append(f"not signed by the root key ({exc})")
    if problems:
        raise InvalidInput("Refused root: " + "; ".join(problems) + ".", fields={"root": problems})


@transaction.atomic
def image_repository_init(*, actor: User | None, root: Metadata[Root]) -> ImageMetadata:
    """Start the image repository from a root v1 signed in the key ceremony: keep the root, sign empty targets,
    snapshot and timestamp, publish. Security officers only; refused once a root exists."""
    key_manager_check(actor, "image_repository.init", source=SOURCE)
    _lock()
    if image_repository_initialised():
        raise Conflict("The image repository already has a root; rotate it instead of starting again.")
    now = timezone.now()
    try:
        _refuse_root(root, now)
    except InvalidInput as refused:  # a root that is not the ceremony's may be a forgery
        security_event(
            kind=SecurityEventKind.ACTION_FORGED, source=SOURCE, message=refused.message, actor=actor, subject="root"
        )
        raise
    stored_root = _store(root)
    targets = _targets_sign(root, now)
    snapshot = _snapshot_sign(root, targets, now)
    _timestamp_sign(root, snapshot, now)
    record_decision(
        actor=actor,
        action="image_repository.init",
        object_type="image_metadata",
        object_id="root.json",
        after={
            "root_version": stored_root.version,
            "root_sha256": stored_root.sha256,
            "expires": stored_root.expires.isoformat(),
            "keys": {role: sorted(root.signed.roles[role].keyids) for role in ROLE_KEYS},
        },
    )
    _publish_after_commit()
    return stored_root


def image_target_add(*, release: FirmwareRelease, change_id: int) -> tuple[ImageTarget, bool]:
    """List a release's image in a new targets version (then snapshot and timestamp); (target, created).

    Called only by the approval-gated signing step (devices.firmware.signing), inside its transaction, after it has
    checked the approvals and the stored bytes. A release already listed with the same hash is a no-op."""
    _lock()
    existing = ImageTarget.objects.filter(release=release).first()
    if existing is not None:
        if existing.sha256 != release.artifact.sha256:
            raise Conflict(f"Release {release.version} is already signed with another image ({existing.sha256}).")
        return existing, False
    root = _root()
    now = timezone.now()
    target = ImageTarget.objects.create(
        release=release,
        path=f"{release.version}/{release.artifact_name}",
        sha256=release.artifact.sha256,
        length=release.artifact.size_bytes,
        hardware_ids=sorted(model.name for model in release.hardware_models.all()),
        release_counter=release.release_counter,
        change_id=change_id,
        targets_version=_next_version(ImageRole.TARGETS),
        signed_at=now,
    )
    targets = _targets_sign(root, now)
    _timestamp_sign(root, _snapshot_sign(root, targets, now), now)
    _publish_after_commit()
    return target, True


def image_targets_add(*, releases: list[FirmwareRelease], change_id: int) -> list[tuple[ImageTarget, bool]]:
    """List several releases' images in ONE new targets version (then snapshot and timestamp): the signing step's
    release and its rollback release, approved together. Each (target, created); a release already listed with
    the same hash is kept as it is, and when every one is, nothing is signed."""
    _lock()
    results: list[tuple[ImageTarget, bool]] = []
    now = timezone.now()
    version = _next_version(ImageRole.TARGETS)
    for release in releases:
        existing = ImageTarget.objects.filter(release=release).first()
        if existing is not None:
            if existing.sha256 != release.artifact.sha256:
                raise Conflict(f"Release {release.version} is already signed with another image ({existing.sha256}).")
            results.append((existing, False))
            continue
        target = ImageTarget.objects.create(
            release=release,
            path=f"{release.version}/{release.artifact_name}",
            sha256=release.artifact.sha256,
            length=release.artifact.size_bytes,
            hardware_ids=sorted(model.name for model in release.hardware_models.all()),
            release_counter=release.release_counter,
            change_id=change_id,
            targets_version=version,
            signed_at=now,
        )
        results.append((target, True))
    if any(created for _, created in results):
        root = _root()
        targets = _targets_sign(root, now)
        _timestamp_sign(root, _snapshot_sign(root, targets, now), now)
        _publish_after_commit()
    return results


def _near_expiry(stored: ImageMetadata, now: datetime) -> bool:
    """Within the refresh margin: less than half of the role's lifetime left."""
    lifetime = timedelta(days=settings.IMAGE_REPOSITORY_EXPIRY_DAYS[stored.role])
    return stored.expires - now < lifetime / 2


@transaction.atomic
def image_repository_refresh(*, now: datetime | None = None) -> list[str]:
    """Re-sign targets (and so snapshot and timestamp), snapshot (and so timestamp) or timestamp alone when within
    the margin of expiry, each a new version listing the same content; returns the roles
    re-signed (empty before `init`, or when nothing is near expiry). Run by the Temporal schedule
    `image-repository-refresh` (workflows/schedules.py)."""
    if not image_repository_initialised():
        return []
    _lock()
    now = now or timezone.now()
    root = _root()
    snapshot, timestamp = image_metadata_latest(ImageRole.SNAPSHOT), image_metadata_latest(ImageRole.TIMESTAMP)
    targets = image_metadata_latest(ImageRole.TARGETS)
    assert snapshot is not None and timestamp is not None and targets is not None  # init signs all three
    resigned: list[str] = []
    if _near_expiry(targets, now):  # the same list of targets, signed again by both targets keys
        targets = _targets_sign(root, now)
        resigned.append(ImageRole.TARGETS)
    if resigned or _near_expiry(snapshot, now):
        snapshot = _snapshot_sign(root, targets, now)
        resigned.append(ImageRole.SNAPSHOT)
    if resigned or _near_expiry(timestamp, now):
        timestamp = _timestamp_sign(root, snapshot, now)
        resigned.append(ImageRole.TIMESTAMP)
    _publish_after_commit()  # also rewrites a tree that a failed write or a lost disk left behind
    if resigned:
        record_decision(
            actor=None,
            action="image_repository.refresh",
            object_type="image_metadata",
            object_id="timestamp.json",
            after={"resigned": resigned, "snapshot": snapshot.version, "timestamp": timestamp.version},
        )
    return resigned
