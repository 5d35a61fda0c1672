"""Content-addressed firmware store: every image lives once at ARTIFACT_ROOT/<sha[:2]>/<sha>.

Rules this module enforces:
- The stored path derives only from the sha256 the server computed itself, never from the client's file name
  (the name is allow-listed by `validate_artifact_name` and kept only as metadata).
- A file becomes visible at its final path only complete and fsynced: same-filesystem rename, or
  copy + hash check + fsync + rename when the temp dir is on another filesystem.
- Identical images dedupe to one file and one FirmwareArtifact row.
- `artifact_store` runs inside the caller's transaction and returns what it placed, so the caller can take the
  file away again if that transaction fails (`artifact_discard`): no orphan files for refused releases.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files import File
from django.db import connection

from devices.firmware.models import FirmwareArtifact
from ota_project.errors import Conflict, InvalidInput
from ota_project.files import SAFE_FILE_NAME_MAX_LENGTH, is_safe_file_name

logger = logging.getLogger(__name__)

SHA256_RE = re.compile(r"\A[0-9a-f]{64}\Z")
ARTIFACT_NAME_MAX_LENGTH = SAFE_FILE_NAME_MAX_LENGTH
CHUNK_SIZE = 1024 * 1024
STORED_FILE_MODE = 0o440  # written once, never modified in place
_DIR_MODE = 0o750


class ArtifactTooLarge(InvalidInput):
    """The image is larger than settings.ARTIFACT_MAX_BYTES (HTTP 413)."""

    status_code = 413
    code = "artifact_too_large"


def artifact_too_large(max_bytes: int, field: str = "file") -> ArtifactTooLarge:
    """The refusal for an image over the limit, naming the field and the limit."""
    message = f"The firmware image is larger than the maximum of {max_bytes} bytes."
    return ArtifactTooLarge(message, fields={field: [message]})


@dataclass(frozen=True)
class ReceivedArtifact:
    """An image the server received into a temporary file and hashed itself while receiving it."""

    sha256: str
    size_bytes: int
    temp_path: Path


@dataclass(frozen=True)
class StoredArtifact:
    """The artifact row for an image, and the file path if this call put the file into the store."""

    artifact: FirmwareArtifact
    placed_path: Path | None


def validate_artifact_name(name: str) -> None:
    """Allow-list for artifact file names: one plain name, no path parts, no leading dot, no `..`, no NUL."""
    if not is_safe_file_name(name):
        raise ValidationError(
            "Use a plain file name: letters, digits, '.', '_' and '-', starting with a letter or digit, "
            f"at most {ARTIFACT_NAME_MAX_LENGTH} characters, without '..' or path separators.",
            code="invalid_artifact_name",
        )


def validate_sha256(sha256: str) -> None:
    """A lower-case hex sha256 digest (the only thing a stored path is built from)."""
    if not isinstance(sha256, str) or not SHA256_RE.match(sha256):
        raise ValueError("sha256 must be 64 lower-case hexadecimal characters")


def artifact_relative_path(sha256: str) -> str:
    """`<sha[:2]>/<sha>`: the path of an image relative to ARTIFACT_ROOT."""
    validate_sha256(sha256)
    return f"{sha256[:2]}/{sha256}"


def artifact_path(sha256: str) -> Path:
    """Absolute path of an image in the store (it may not exist)."""
    return Path(settings.ARTIFACT_ROOT) / artifact_relative_path(sha256)


def artifact_open(sha256: str) -> BinaryIO:
    """Open a stored image for reading; FileNotFoundError when the store does not have it."""
    return open(artifact_path(sha256), "rb")  # the caller (a FileResponse) closes it


def artifact_exists(sha256: str, size_bytes: int) -> bool:
    """True when the store holds a regular file of the expected size for this digest."""
    path = artifact_path(sha256)
    return path.is_file() and not path.is_symlink() and path.stat().st_size == size_bytes


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable; some filesystems refuse fsync on a directory, which is harmless.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _lock_digest(sha256: str) -> None:
    # Serialises stores of the same image until the transaction ends, so that a transaction that fails and
    # takes its file away cannot race one that decided to reuse that file.
    key = int.from_bytes(bytes.fromhex(sha256[:16]), "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [key])


def _copy_verified(received: ReceivedArtifact, dest: Path) -> None:
    """Copy into a staging file next to `dest`, check the digest again, fsync, then rename into place."""
    stage = dest.parent / f".{received.sha256}.{secrets.token_hex(8)}.partial"
    digest = hashlib.sha256()
    size = 0
    try:
        fd = os.open(stage, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, open(received.temp_path, "rb") as src:
            while chunk := src.read(CHUNK_SIZE):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != received.sha256 or size != received.size_bytes:
            raise OSError(errno.EIO, "the image changed while it was copied into the store")
        os.chmod(stage, STORED_FILE_MODE)
        os.replace(stage, dest)
    except BaseException:
        stage.unlink(missing_ok=True)
        raise


def _place(received: ReceivedArtifact, dest: Path) -> None:
    dest.parent.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    try:
        os.chmod(received.temp_path, STORED_FILE_MODE)
        _fsync_file(received.temp_path)
        # Atomic on one filesystem; the upload's temp-file object later finds its file gone, which Django allows.
        os.replace(received.temp_path, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_verified(received, dest)
    _fsync_dir(dest.parent)


def artifact_store(*, received: ReceivedArtifact) -> StoredArtifact:
    """Put a received image into the store (or reuse the identical stored one) and get its artifact row.

    Must run inside the transaction that uses the artifact. If that transaction fails, call
    `artifact_discard` with the result so a file this call placed does not outlive it.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("artifact_store must run inside the transaction that uses the artifact")
    validate_sha256(received.sha256)
    _lock_digest(received.sha256)
    dest = artifact_path(received.sha256)
    placed_path: Path | None = None
    if not artifact_exists(received.sha256, received.size_bytes):
        if dest.exists() or dest.is_symlink():
            logger.error("artifact %s in the store has the wrong size or type; replacing it", received.sha256)
        _place(received, dest)
        placed_path = dest
    try:
        artifact, _ = FirmwareArtifact.objects.get_or_create(
            sha256=received.sha256,
            defaults={"size_bytes": received.size_bytes, "storage_path": artifact_relative_path(received.sha256)},
        )
        if artifact.size_bytes != received.size_bytes:
            raise Conflict(
                "The stored artifact record for this digest has a different size; the store needs inspection.",
                code="artifact_inconsistent",
            )
    except BaseException:
        if placed_path is not None:
            placed_path.unlink(missing_ok=True)
        raise
    return StoredArtifact(artifact=artifact, placed_path=placed_path)


def artifact_discard(stored: StoredArtifact) -> None:
    """Take away a file that `artifact_store` placed, after the transaction that needed it failed."""
    if stored.placed_path is not None:
        stored.placed_path.unlink(missing_ok=True)


def receive_stream(chunks: Iterable[bytes], *, max_bytes: int, field: str = "file") -> ReceivedArtifact:
    """Stream bytes into a temp file in FILE_UPLOAD_TEMP_DIR, hashing as they come; refuse past max_bytes.

    The caller owns the temp file and removes it with `release_temp` when done.
    """
    temp_dir = Path(settings.FILE_UPLOAD_TEMP_DIR or tempfile.gettempdir())
    temp_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="artifact-", suffix=".upload", dir=temp_dir)
    temp_path = Path(name)
    digest = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise artifact_too_large(max_bytes, field)
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return ReceivedArtifact(sha256=digest.hexdigest(), size_bytes=size, temp_path=temp_path)


def iter_file(source: BinaryIO | File[bytes], chunk_size: int = CHUNK_SIZE) -> Iterable[bytes]:
    """Read a binary file in chunks (never the whole image at once)."""
    while chunk := source.read(chunk_size):
        yield chunk


def release_temp(received: ReceivedArtifact) -> None:
    """Remove a received image's temp file (a no-op once the store has moved it into place)."""
    received.temp_path.unlink(missing_ok=True)
