"""Reading a signed or drafted TUF root from a file, for the image repository's and the director's commands."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import CommandError
from securesystemslib.exceptions import FormatError
from tuf.api.metadata import Metadata, Root
from tuf.api.serialization import DeserializationError


def read_root(path: Path) -> Metadata[Root]:
    """The root metadata in `path`; a CommandError when it cannot be read or holds another role."""
    try:
        root = Metadata[Root].from_bytes(path.read_bytes())
    except (OSError, DeserializationError, FormatError) as exc:
        raise CommandError(f"cannot read a root from {path}: {exc}") from exc
    if not isinstance(root.signed, Root):
        raise CommandError(f"{path} is {root.signed.type} metadata, not root")
    return root
