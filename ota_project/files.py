"""Safe file names and content-addressed storage for uploaded files (evidence, exports)."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.core.files.uploadedfile import UploadedFile

from ota_project.errors import InvalidInput


@functools.cache
def run_time_secret(path: Path, from_environment: str = "", *, nbytes: int = 32) -> bytes:
    """A secret generated at run time: `from_environment` when set, else the file at `path`, created on first use
    (mode 0600, `nbytes` random bytes, URL-safe). Written whole under a temporary name and linked into place, so of
    processes starting together one wins and all read the same secret (link refuses to overwrite). Cached per
    process and argument."""
    if from_environment:
        return from_environment.encode()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(nbytes))
        try:
            os.link(staging, path)
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_text().strip().encode()


SAFE_FILE_NAME_RE = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")
SAFE_FILE_NAME_MAX_LENGTH = 128


def is_safe_file_name(name: object) -> bool:
    """One plain name: letters, digits, '.', '-', '_', starting with a letter or digit, no `..`; never a path."""
    return isinstance(name, str) and bool(SAFE_FILE_NAME_RE.match(name)) and ".." not in name


def validate_file_name(name: str, *, field: str = "file") -> str:
    """Refuse anything but a safe plain file name (see `is_safe_file_name`), naming the field."""
    if not is_safe_file_name(name):
        raise InvalidInput(
            "File names may only contain letters, digits, '.', '-' and '_', must start with a letter or digit "
            "and may not contain '..'.",
            fields={field: ["Invalid file name."]},
        )
    return name


@dataclass(frozen=True)
class StoredFile:
    sha256: str
    size_bytes: int
    relative_path: str


def store_content_addressed(*, root: Path, upload: UploadedFile, max_bytes: int, field: str = "file") -> StoredFile:
    """Copy an upload into `root/<sha[:2]>/<sha>` while hashing it; identical content is stored once."""
    root.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    fd, temp_name = tempfile.mkstemp(dir=root, prefix=".incoming-")
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in upload.chunks():
                size += len(chunk)
                if size > max_bytes:
                    raise InvalidInput(
                        f"The file is larger than the limit of {max_bytes} bytes.", fields={field: ["File too large."]}
                    )
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha256 = digest.hexdigest()
        relative = f"{sha256[:2]}/{sha256}"
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            os.unlink(temp_name)
        else:
            os.replace(temp_name, target)
        return StoredFile(sha256=sha256, size_bytes=size, relative_path=relative)
    except BaseException:
        if os.path.exists(temp_name):
            os.unlink(temp_name)
        raise
