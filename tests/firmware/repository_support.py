"""The image repository in tests: keys on the session token (the root key standing in for the offline token's),
a real artifact for a release, and an independent python-tuf client over HTTP."""

from __future__ import annotations

import functools
import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from django.contrib.auth.models import User
from tuf.ngclient import Updater

from devices.firmware.keys.services import key_create, key_import_public
from devices.firmware.models import FirmwareRelease
from devices.firmware.repository.services import image_repository_init, root_draft, root_sign_offline
from devices.firmware.storage import artifact_path
from ota_project.hsm.public import KeyAlgorithm
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import role_label, server_token, token_key_generate

ONLINE_ROLES = (KeyRole.TARGETS_RELEASE, KeyRole.TARGETS_SECURITY_OFFICER, KeyRole.SNAPSHOT, KeyRole.TIMESTAMP)


def repository_start(officer: User) -> None:
    """Register a root key (made on the session token, as a ceremony would on the offline one) and the online keys,
    sign root v1 with it and start the repository."""
    root_key = token_key_generate(label=role_label(KeyRole.ROOT), algorithm=KeyAlgorithm.ED25519)
    key_import_public(actor=officer, role=KeyRole.ROOT, public_key=root_key.public_key_pem)
    for role in ONLINE_ROLES:
        key_create(actor=officer, role=role)
    image_repository_init(actor=officer, root=root_sign_offline(root_draft(), token=server_token()))


def release_bytes(release: FirmwareRelease, data: bytes) -> None:
    """Give a factory-made release a real stored image (before its change is approved: approvals bind the hash)."""
    sha256 = hashlib.sha256(data).hexdigest()
    artifact = release.artifact
    artifact.sha256, artifact.size_bytes, artifact.storage_path = sha256, len(data), f"{sha256[:2]}/{sha256}"
    artifact.save()
    path = artifact_path(sha256)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def served(directory: Path) -> Iterator[str]:
    """The repository's static tree over a real HTTP server (what a CDN would serve); yields its base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def client(base_url: str, work: Path, root: bytes) -> Updater:
    """A third party's python-tuf client that trusts `root` alone."""
    (work / "metadata").mkdir(parents=True, exist_ok=True)
    (work / "downloads").mkdir(parents=True, exist_ok=True)
    return Updater(
        metadata_dir=str(work / "metadata"),
        metadata_base_url=f"{base_url}/metadata/",
        target_dir=str(work / "downloads"),
        target_base_url=f"{base_url}/targets/",
        bootstrap=root,
    )
