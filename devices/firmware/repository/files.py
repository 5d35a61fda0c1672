"""The image repository as static files, CDN-style: IMAGE_REPOSITORY_DIR/metadata/ and targets/.

Consistent snapshots: metadata files are version-prefixed (`3.targets.json`) and never rewritten, target files are
hash-prefixed (`targets/1.2.0/<sha256>.tcu.bin`); only `timestamp.json` (and `root.json`, the bootstrap copy of the
newest root) keep one name. Every file appears complete (temp file, fsync, rename, fsync of the directory), and the
newest versions are written targets first, then snapshot, then timestamp, so a client never finds a timestamp
naming a snapshot that is not there yet. The files are derived from the database (`image_files_write`), which is
the truth: writing again is a no-op, and a lost directory is rebuilt from the rows.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path, PurePosixPath

from django.conf import settings

from devices.firmware.repository.models import ImageMetadata, ImageRole, ImageTarget
from devices.firmware.repository.selectors import image_metadata_latest
from devices.firmware.storage import CHUNK_SIZE, artifact_path

_DIR_MODE = 0o755  # served as static files


def metadata_dir() -> Path:
    return Path(settings.IMAGE_REPOSITORY_DIR) / "metadata"


def targets_dir() -> Path:
    return Path(settings.IMAGE_REPOSITORY_DIR) / "targets"


def target_file_path(path: str, sha256: str) -> Path:
    """Where a target is served: its directory, then `<sha256>.<name>` (what TUF clients ask for)."""
    posix = PurePosixPath(path)
    return targets_dir().joinpath(*posix.parent.parts, f"{sha256}.{posix.name}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _copy_verified(source: Path, path: Path, sha256: str) -> None:
    """Copy an artifact to its served name, checking the copy hashes to the signed sha256 before it appears."""
    path.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    digest = hashlib.sha256()
    try:
        with source.open("rb") as reader, os.fdopen(fd, "wb") as writer:
            while chunk := reader.read(CHUNK_SIZE):
                digest.update(chunk)
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        if digest.hexdigest() != sha256:
            raise ValueError(f"artifact {sha256} changed on disk; not served")
        os.chmod(temp, 0o644)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _write_if_different(path: Path, data: bytes) -> None:
    """A versioned file is written once; one that holds other bytes (a directory left behind by another database,
    e.g. a drill or a restored backup) is replaced by the database's version, which is what clients verify."""
    try:
        if path.read_bytes() == data:
            return
    except FileNotFoundError:
        pass
    _write_atomic(path, data)


def image_files_write() -> None:
    """Bring the static tree up to the database: every target file and root version, the newest targets and
    snapshot, then timestamp.json (after each commit that signed something, and at each refresh; idempotent). A
    target file that cannot be written stops it before the new timestamp appears."""
    for target in ImageTarget.objects.all():
        destination = target_file_path(target.path, target.sha256)
        if not destination.exists():
            _copy_verified(artifact_path(target.sha256), destination, target.sha256)
    for root in ImageMetadata.objects.filter(role=ImageRole.ROOT).order_by("version"):
        _write_if_different(metadata_dir() / f"{root.version}.root.json", bytes(root.content))
    for role in (ImageRole.TARGETS, ImageRole.SNAPSHOT):
        latest = image_metadata_latest(role)
        if latest is not None:
            _write_if_different(metadata_dir() / f"{latest.version}.{role}.json", bytes(latest.content))
    for role in (ImageRole.ROOT, ImageRole.TIMESTAMP):
        latest = image_metadata_latest(role)
        if latest is not None:
            _write_atomic(metadata_dir() / f"{role}.json", bytes(latest.content))
