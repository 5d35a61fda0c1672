"""The image repository under attack: fixtures and helpers shared by tests/security/test_repository_*.py.

The repository is started as in tests/firmware (root key on the session token standing in for the offline one);
every check is made by python-tuf's ngclient, a third party's client that trusts 1.root.json alone, over the
published static files served by a real HTTP server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from tuf.api.metadata import Metadata
from tuf.ngclient import Updater, UpdaterConfig

from devices.agent.tuf_limits import updater_config_kwargs
from devices.firmware.keys.services import key_rotate
from devices.firmware.repository.services import (
    image_repository_root,
    image_repository_rotate_root,
    root_draft_rotation,
    root_sign_rotation,
)
from ota_project.hsm.public import KeyAlgorithm
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.token import role_label, server_token, token_key_generate
from tests.firmware.repository_support import repository_start, served


@pytest.fixture(name="chain_settings")
def chain_settings_fixture(settings, tmp_path):
    """Role labels of this test only (keys of other tests stay in the session token), and its own served tree."""
    settings.PKCS11_LABEL_PREFIX = f"security-{uuid.uuid4().hex[:12]}"
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository"
    return settings


@pytest.fixture(name="repository")
def repository_fixture(chain_settings, security_officer, django_capture_on_commit_callbacks) -> Path:
    with django_capture_on_commit_callbacks(execute=True):
        repository_start(security_officer)
    return Path(chain_settings.IMAGE_REPOSITORY_DIR)


@dataclass
class Vehicle:
    """A python-tuf client over the served tree, with its own trusted-metadata directory."""

    base_url: str
    work: Path
    config: UpdaterConfig

    def updater(self) -> Updater:
        (self.work / "metadata").mkdir(parents=True, exist_ok=True)
        (self.work / "downloads").mkdir(parents=True, exist_ok=True)
        return Updater(
            metadata_dir=str(self.work / "metadata"),
            metadata_base_url=f"{self.base_url}/metadata/",
            target_dir=str(self.work / "downloads"),
            target_base_url=f"{self.base_url}/targets/",
            config=self.config,
            bootstrap=None,  # the trusted root.json already in metadata_dir
        )

    def trusted_version(self, role: str) -> int:
        """The version of `role` this client keeps as trusted on disk."""
        document: dict[str, Any] = json.loads((self.work / "metadata" / f"{role}.json").read_bytes())
        return int(document["signed"]["version"])


@contextmanager
def vehicle(repository: Path, work: Path, *, scheme: str = "ecdsa-p256") -> Iterator[Vehicle]:
    """A vehicle that got 1.root.json out of band (its only trust), served the repository over HTTP."""
    (work / "metadata").mkdir(parents=True, exist_ok=True)
    (work / "metadata" / "root.json").write_bytes((repository / "metadata" / "1.root.json").read_bytes())
    with served(repository) as url:
        yield Vehicle(url, work, UpdaterConfig(**updater_config_kwargs(scheme)))  # type: ignore[arg-type]


def publish(repository: Path, name: str, metadata: Metadata[Any] | bytes) -> None:
    """What an attacker with write access to the CDN does: put a file in the served tree."""
    data = metadata if isinstance(metadata, bytes) else metadata.to_bytes()
    (repository / "metadata" / name).write_bytes(data)


def new_root_key_registered(officer: User) -> None:
    """A new root key (on the session token, as a ceremony would make on a new offline token), registered."""
    key = token_key_generate(label=role_label(KeyRole.ROOT), algorithm=KeyAlgorithm.ED25519)
    key_rotate(actor=officer, role=KeyRole.ROOT, public_key=key.public_key_pem, reason="ceremony")


def rotate_root(officer: User, *, reason: str = "rotation") -> None:
    """Root N+1 from the registry's active keys, signed by every root key of the session token named by N or N+1."""
    trusted = image_repository_root()
    signed = root_sign_rotation(root_draft_rotation(), trusted=trusted, token=server_token())
    image_repository_rotate_root(actor=officer, root=signed, reason=reason)
