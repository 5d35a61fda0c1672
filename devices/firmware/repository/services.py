"""Build, sign and store the image repository's metadata (python-tuf's Metadata API), keys in the token.

Rules: root is signed only by the offline root key (`root_sign_offline`, in a key ceremony) and must list exactly
the registry's active keys; targets needs 2 distinct keys (targets-release and targets-security-officer, threshold
2); every new metadata version is checked against the stored root before it is kept, so a key the root does not
trust signs nothing. Writes are serialised by one advisory lock, stored in the caller's transaction and written to
the static tree after it commits (devices.firmware.repository.files).

Hybrid mode (a hardware model whose signing scheme is hybrid): every top-level role also lists an ML-DSA-65 key
(registry roles `*-ml-dsa`) and its threshold is the number of its keys, so no set of keys of one type (classical
alone, or ML-DSA alone) can ever meet it; the whole chain (root, timestamp, snapshot, targets) vouches for the
image, so a post-quantum guarantee needs every role hybrid. A release for a hybrid model is signed only into a
hybrid repository. Root rotation (`image_repository_rotate_root`): version N+1 signed by the threshold of root N and
its own; it re-signs targets, snapshot and timestamp at once with the keys it names.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta

from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection, transaction
from django.utils import timezone
from securesystemslib.signer import Signer
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
from devices.agent.tuf_limits import CLASSICAL_LIMITS, HYBRID_LIMITS
from devices.choices import SigningScheme
from devices.firmware.keys.selectors import signing_key_active
from devices.firmware.keys.services import key_manager_check, key_retired_destroy
from devices.firmware.models import FirmwareRelease
from devices.firmware.repository.files import image_files_write
from devices.firmware.repository.models import ImageMetadata, ImageRole, ImageTarget
from devices.firmware.repository.selectors import image_metadata_latest, image_repository_initialised
from devices.firmware.repository.signers import root_named_signer, token_key_signer, tuf_key
from devices.models import HardwareModel
from ota_project.errors import Conflict, DomainError, InvalidInput
from ota_project.hsm.public import TUF_KEY_TYPE, KeyAlgorithm
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import TokenConfig, TokenError, role_label, token_keys

# Which registry roles sign each TUF role, and how many of them must.
ROLE_KEYS: dict[str, tuple[KeyRole, ...]] = {
    ImageRole.ROOT: (KeyRole.ROOT,),
    ImageRole.TARGETS: (KeyRole.TARGETS_RELEASE, KeyRole.TARGETS_SECURITY_OFFICER),
    ImageRole.SNAPSHOT: (KeyRole.SNAPSHOT,),
    ImageRole.TIMESTAMP: (KeyRole.TIMESTAMP,),
}
# Hybrid mode: each role's keys plus its ML-DSA-65 key; the threshold is all of them.
HYBRID_ROLE_KEYS: dict[str, tuple[KeyRole, ...]] = {
    ImageRole.ROOT: (KeyRole.ROOT, KeyRole.ROOT_ML_DSA),
    ImageRole.TARGETS: (KeyRole.TARGETS_RELEASE, KeyRole.TARGETS_SECURITY_OFFICER, KeyRole.TARGETS_ML_DSA),
    ImageRole.SNAPSHOT: (KeyRole.SNAPSHOT, KeyRole.SNAPSHOT_ML_DSA),
    ImageRole.TIMESTAMP: (KeyRole.TIMESTAMP, KeyRole.TIMESTAMP_ML_DSA),
}
SOURCE = "image_repository"
THRESHOLDS: dict[str, int] = {ImageRole.ROOT: 1, ImageRole.TARGETS: 2, ImageRole.SNAPSHOT: 1, ImageRole.TIMESTAMP: 1}
_ML_DSA_KEY_TYPE = TUF_KEY_TYPE[KeyAlgorithm.ML_DSA_65]
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


def repository_hybrid_required() -> bool:
    """True when some hardware model's signing scheme is hybrid: then every root drafted is hybrid."""
    return HardwareModel.objects.filter(signing_scheme=SigningScheme.HYBRID_ML_DSA_65).exists()


def role_keys(*, hybrid: bool) -> dict[str, tuple[KeyRole, ...]]:
    """Which registry roles sign each TUF role (all of them must: the threshold is their number)."""
    return HYBRID_ROLE_KEYS if hybrid else ROLE_KEYS


def root_is_hybrid(root: Root) -> bool:
    """True when no role of `root` can meet its threshold with classical keys alone or with ML-DSA keys alone."""
    for role in ROLE_KEYS:
        keyids = root.roles[role].keyids
        ml_dsa = sum(1 for keyid in keyids if keyid in root.keys and root.keys[keyid].keytype == _ML_DSA_KEY_TYPE)
        threshold = root.roles[role].threshold
        if ml_dsa == 0 or ml_dsa >= threshold or len(keyids) - ml_dsa >= threshold:
            return False
    return True


def _draft(version: int, now: datetime, hybrid: bool) -> Metadata[Root]:
    root = Root(version=version, expires=_expires(ImageRole.ROOT, now), consistent_snapshot=True)
    for tuf_role, key_roles in role_keys(hybrid=hybrid).items():
        for key_role in key_roles:
            key = signing_key_active(key_role)
            if key is None:
                raise Conflict(
                    f"Role {key_role} has no active key; the image repository's root needs one.",
                    fields={"role": [f"No active {key_role} key."]},
                )
            root.add_key(tuf_key(key), tuf_role)
        root.roles[tuf_role].threshold = len(key_roles)  # every key: one key type alone never meets it
    return Metadata(root)


def root_draft(*, now: datetime | None = None, hybrid: bool | None = None) -> Metadata[Root]:
    """Root v1, unsigned, from the registry's active keys of every role (consistent snapshots, thresholds above);
    hybrid (ML-DSA keys too) when asked, or by default when a hardware model's scheme is hybrid."""
    return _draft(1, now or timezone.now(), repository_hybrid_required() if hybrid is None else hybrid)


def root_draft_rotation(*, now: datetime | None = None, hybrid: bool | None = None) -> Metadata[Root]:
    """The next root (version N+1 of the published root N), unsigned, from the registry's active keys: what a root
    rotation signs. Hybrid when asked, when the published root is, or when a hardware model needs it."""
    trusted = _root()
    if hybrid is None:
        hybrid = root_is_hybrid(trusted.signed) or repository_hybrid_required()
    return _draft(trusted.signed.version + 1, now or timezone.now(), hybrid)


def root_sign_offline(root: Metadata[Root], *, token: TokenConfig) -> Metadata[Root]:
    """Sign a root with the root keys it names that `token` holds (the key ceremony, on the offline token; no
    database needed); returns it signed. Refused when the token holds none of them."""
    return _sign_with_root_keys(root, set(root.signed.roles[Root.type].keyids), token)


def root_sign_rotation(root: Metadata[Root], *, trusted: Metadata[Root], token: TokenConfig) -> Metadata[Root]:
    """Sign a rotated root (version N+1) with the root keys `token` holds that either it or the trusted root N names:
    a rotation needs the threshold of both (run once per offline token when old and new keys live apart)."""
    if root.signed.version != trusted.signed.version + 1:
        raise Conflict(f"Root v{root.signed.version} does not follow the trusted root v{trusted.signed.version}.")
    named = set(root.signed.roles[Root.type].keyids) | set(trusted.signed.roles[Root.type].keyids)
    return _sign_with_root_keys(root, named, token)


def _sign_with_root_keys(root: Metadata[Root], named: set[str], token: TokenConfig) -> Metadata[Root]:
    held = token_keys(label=role_label(KeyRole.ROOT), token=token)
    held += token_keys(label=role_label(KeyRole.ROOT_ML_DSA), token=token)
    keys = [key for key in held if key.key_id in named]
    if not keys:
        raise Conflict(f"Token {token.token_label!r} holds none of the root keys this root names: {sorted(named)}.")
    for key in keys:
        _sign(root, token_key_signer(key, token))
    return root


def _sign(metadata: Metadata, signer: Signer) -> None:
    """Append the signer's signature; a token's refusal (a wrong PIN, a missing key) surfaces as itself, not wrapped
    in python-tuf's UnsignedMetadataError, so callers record it (hsm_pin_refused) and report it plainly."""
    try:
        metadata.sign(signer, append=True)
    except UnsignedMetadataError as exc:
        if isinstance(exc.__cause__, TokenError | DomainError):
            raise exc.__cause__ from None
        raise


def _size_limit(role: str, hybrid: bool) -> int:
    limits = HYBRID_LIMITS if hybrid else CLASSICAL_LIMITS
    by_role: dict[str, int] = {
        ImageRole.ROOT: limits.root_max_length,
        ImageRole.TARGETS: limits.targets_max_length,
        ImageRole.SNAPSHOT: limits.snapshot_max_length,
        ImageRole.TIMESTAMP: limits.timestamp_max_length,
    }
    return by_role[role]


def _store(
    metadata: Metadata[Root] | Metadata[Targets] | Metadata[Snapshot] | Metadata[Timestamp], *, hybrid: bool = False
) -> ImageMetadata:
    content = metadata.to_bytes(_SERIALIZER)
    limit = _size_limit(metadata.signed.type, hybrid)
    if len(content) > limit:  # a client with the published limits (devices.agent.tuf_limits) would refuse it
        raise Conflict(f"{metadata.signed.type} metadata of {len(content)} bytes exceeds the clients' limit {limit}.")
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
    hybrid = root_is_hybrid(root.signed)
    named = set(root.signed.roles[role].keyids)
    for key_role in role_keys(hybrid=hybrid)[role]:
        _sign(metadata, root_named_signer(key_role, named))
    try:
        root.verify_delegate(role, metadata)  # the root's keys and threshold, as any client will check them
    except UnsignedMetadataError as exc:
        # E.g. an online key rotated in the registry that the root does not name yet: nothing is signed by it.
        raise Conflict(
            f"The active {role} keys are not the ones root v{root.signed.version} trusts ({exc}); "
            "sign a new root that names them (a key ceremony) first.",
            code="key_not_in_root",
        ) from exc
    return _store(metadata, hybrid=hybrid)


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


def _root_problems(root: Metadata[Root], now: datetime, *, version: int) -> list[str]:
    """What keeps `root` from being the repository's root `version`: the version, consistent snapshots, expiry, and
    keys and thresholds other than the registry's active keys (hybrid when it is, or when a model needs it)."""
    signed = root.signed
    problems: list[str] = []
    if signed.version != version:
        problems.append(f"version {signed.version}, not {version}")
    if not signed.consistent_snapshot:
        problems.append("consistent snapshots off")
    if signed.is_expired(now):
        problems.append("already expired")
    hybrid = root_is_hybrid(signed)
    if not hybrid and repository_hybrid_required():
        problems.append("a hardware model's signing scheme is hybrid: every role needs its ML-DSA key too")
    try:
        draft = _draft(version, now, hybrid).signed
    except Conflict as exc:
        return [*problems, exc.message]
    for role in ROLE_KEYS:
        if (set(signed.roles[role].keyids), signed.roles[role].threshold) != (
            set(draft.roles[role].keyids),
            draft.roles[role].threshold,
        ):
            problems.append(f"{role} keys or threshold differ from the registry's active keys")
    return problems


def _refuse_root(root: Metadata[Root], now: datetime) -> None:
    """A root v1 is kept only as the registry would have drafted it, signed by the root key, and not expired."""
    if not isinstance(root.signed, Root):
        raise InvalidInput("Refused root: not root metadata.", fields={"root": ["Not root metadata."]})
    problems = _root_problems(root, now, version=1)
    try:
        root.verify_delegate(Root.type, root)
    except Exception as exc:  # python-tuf raises UnsignedMetadataError, and ValueError for malformed signatures
        problems.append(f"not signed by the root key ({exc})")
    if problems:
        raise InvalidInput("Refused root: " + "; ".join(problems) + ".", fields={"root": problems})


def _refuse_rotation(trusted: Metadata[Root], root: Metadata[Root], now: datetime) -> None:
    """A rotated root is kept only as version N+1 of the published root N, signed by the root threshold of N (so
    a stolen new key alone cannot rotate) and of itself (so the new keys are proven), listing the registry's keys."""
    if not isinstance(root.signed, Root):
        raise InvalidInput("Refused root: not root metadata.", fields={"root": ["Not root metadata."]})
    problems = _root_problems(root, now, version=trusted.signed.version + 1)
    for name, signer_root in (("the published", trusted), ("its own", root)):
        try:
            signer_root.verify_delegate(Root.type, root)
        except Exception as exc:  # UnsignedMetadataError, or ValueError for malformed signatures
            problems.append(f"not signed by the threshold of {name} root keys ({exc})")
    if problems:
        raise InvalidInput("Refused root rotation: " + "; ".join(problems) + ".", fields={"root": problems})


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
    stored_root = _store(root, hybrid=root_is_hybrid(root.signed))
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
            "hybrid": root_is_hybrid(root.signed),
        },
    )
    _publish_after_commit()
    return stored_root


def _root_summary(root: Metadata[Root], stored: ImageMetadata) -> dict[str, object]:
    return {
        "root_version": root.signed.version,
        "root_sha256": stored.sha256,
        "expires": root.signed.expires.isoformat(),
        "hybrid": root_is_hybrid(root.signed),
        "keys": {role: sorted(root.signed.roles[role].keyids) for role in ROLE_KEYS},
        "thresholds": {role: root.signed.roles[role].threshold for role in ROLE_KEYS},
    }


@transaction.atomic
def image_repository_rotate_root(*, actor: User | None, root: Metadata[Root], reason: str = "") -> ImageMetadata:
    """Publish root N+1 (signed in a ceremony by the root thresholds of N and N+1, listing the registry's active
    keys) and re-sign targets, snapshot and timestamp with the keys it names at once, so the repository keeps
    serving across a key rotation or revocation; retired keys it no longer names lose their private halves. A
    root that skips a version or lacks a threshold is refused and recorded as a security event."""
    key_manager_check(actor, "image_repository.rotate_root", source=SOURCE)
    _lock()
    trusted = _root()
    previous = image_metadata_latest(ImageRole.ROOT)
    assert previous is not None  # _root() refuses before init
    now = timezone.now()
    try:
        _refuse_rotation(trusted, root, now)
    except InvalidInput as refused:  # a rotation nobody holding the root keys signed may be a forgery
        security_event(
            kind=SecurityEventKind.ACTION_FORGED,
            source=SOURCE,
            message=refused.message,
            actor=actor,
            subject=f"root v{getattr(root.signed, 'version', '?')}",
        )
        raise
    stored_root = _store(root, hybrid=root_is_hybrid(root.signed))
    # Carry the rotation through: new versions of every online role signed by the keys the new root names, so a
    # client that takes root N+1 finds metadata it verifies (and drops a fast-forwarded timestamp or snapshot
    # signed by keys N+1 no longer trusts).
    targets = _targets_sign(root, now)
    snapshot = _snapshot_sign(root, targets, now)
    timestamp = _timestamp_sign(root, snapshot, now)
    named = {keyid for role in ROLE_KEYS for keyid in root.signed.roles[role].keyids}
    dropped = {keyid for role in ROLE_KEYS for keyid in trusted.signed.roles[role].keyids} - named
    destroyed = key_retired_destroy(keep=named)
    record_decision(
        actor=actor,
        action="image_repository.rotate_root",
        object_type="image_metadata",
        object_id="root.json",
        before=_root_summary(trusted, previous),
        after={
            **_root_summary(root, stored_root),
            "resigned": {"targets": targets.version, "snapshot": snapshot.version, "timestamp": timestamp.version},
            "keys_dropped": sorted(dropped),
            "retired_keys_destroyed": destroyed,
        },
        reason=reason,
    )
    _publish_after_commit()
    return stored_root


def image_repository_root() -> Metadata[Root]:
    """The published root (newest version): what a rotation drafts from and a ceremony signs against."""
    return _root()


def _refuse_hybrid_in_classical(release: FirmwareRelease, root: Metadata[Root]) -> None:
    """A release for a hybrid hardware model enters only a hybrid repository (refused and recorded otherwise)."""
    hybrid_models = sorted(
        release.hardware_models.filter(signing_scheme=SigningScheme.HYBRID_ML_DSA_65).values_list("name", flat=True)
    )
    if hybrid_models and not root_is_hybrid(root.signed):
        security_event(
            kind=SecurityEventKind.RELEASE_SIGN_REFUSED,
            source=SOURCE,
            message=f"release {release.version} for hybrid model(s) {', '.join(hybrid_models)} in a classical repository",
            subject=f"release:{release.version} sha256:{release.artifact.sha256}",
        )
        raise Conflict(
            f"Hardware model(s) {', '.join(hybrid_models)} need hybrid signatures (classical and ML-DSA-65); root "
            f"v{root.signed.version} is classical: rotate to a hybrid root first (image_repository rotate-root).",
            code="hybrid_root_required",
        )


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
    _refuse_hybrid_in_classical(release, root)
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
    root = _root()
    for release in releases:
        if not ImageTarget.objects.filter(release=release).exists():
            _refuse_hybrid_in_classical(release, root)
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
