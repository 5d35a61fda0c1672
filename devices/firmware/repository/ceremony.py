"""The development key ceremony: a root made on a SoftHSM2 "offline" token under DATA_DIR, for `make run`, demos
and tests only. Production makes the root on a real offline token (README, "Image repository").

It does what a ceremony does, with the offline token in another SoftHSM2 configuration (so the server's process
never loads it): generate the root key there (`keys create --offline`, a child process), register its public half,
create the online keys the root will name, draft root v1, have the child process sign it (`image_repository
sign-root`), and start the repository from the signed root.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from tuf.api.metadata import Metadata, Root

from devices.firmware.keys.selectors import signing_key_active
from devices.firmware.keys.services import key_create, key_import_public
from devices.firmware.repository.models import ImageMetadata
from devices.firmware.repository.services import (
    image_repository_init,
    image_repository_root,
    image_repository_rotate_root,
    repository_hybrid_required,
    role_keys,
    root_draft,
    root_draft_rotation,
    root_is_hybrid,
)
from ota_project.errors import Conflict
from ota_project.hsm.roles import OFFLINE_ROLES
from ota_project.hsm.softhsm import softhsm_setup

DEV_OFFLINE_TOKEN = "ota-offline-dev"


def offline_dev_environment(directory: Path | None = None) -> dict[str, str]:
    """The ceremony's child processes' environment: the development offline token (its own SoftHSM2
    configuration, under DATA_DIR/softhsm-offline-dev unless `directory` says otherwise)."""
    token = softhsm_setup(directory or Path(settings.DATA_DIR) / "softhsm-offline-dev", DEV_OFFLINE_TOKEN)
    return {
        **os.environ,
        "SOFTHSM2_CONF": str(token.conf),
        "OTA_PKCS11_OFFLINE_TOKEN": DEV_OFFLINE_TOKEN,
        "OTA_PKCS11_OFFLINE_PIN": token.pin_file.read_text().strip(),
        "OTA_PKCS11_LABEL_PREFIX": settings.PKCS11_LABEL_PREFIX,
    }


def ceremony_step(environment: dict[str, str], *arguments: str) -> None:
    """Run one `manage.py` step of the ceremony in a child process that holds the offline token."""
    done = subprocess.run(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise Conflict(f"ceremony step `{' '.join(arguments[:2])}` failed: {done.stderr.strip()[-500:]}")


def dev_key_ensure(actor: User, environment: dict[str, str], work: Path, key_role: str) -> None:
    """Register the role's key unless one is active: an offline role's made on the dev offline token (a child
    process; only its public half reaches the server), any other on the server's token."""
    if signing_key_active(key_role) is not None:
        return
    if key_role in OFFLINE_ROLES:
        public_key = work / f"{key_role}.pem"
        ceremony_step(environment, "keys", "create", "--role", key_role, "--offline", "--out", str(public_key))
        key_import_public(
            actor=actor, role=key_role, public_key=public_key.read_text(), reason="development key ceremony"
        )
    else:
        key_create(actor=actor, role=key_role, reason="development key ceremony")


def _dev_keys(actor: User, environment: dict[str, str], work: Path, *, hybrid: bool) -> None:
    """Register the missing keys a root needs."""
    for key_roles in role_keys(hybrid=hybrid).values():
        for key_role in key_roles:
            dev_key_ensure(actor, environment, work, key_role)


def dev_ceremony(*, actor: User, directory: Path | None = None) -> ImageMetadata:
    """Development only: make the root key on a SoftHSM2 token under DATA_DIR/softhsm-offline-dev, the missing
    online keys on the server's token, and start the image repository from a root v1 signed on that token."""
    environment = offline_dev_environment(directory)
    with tempfile.TemporaryDirectory() as work:
        draft, signed = Path(work) / "root.draft.json", Path(work) / "root.json"
        _dev_keys(actor, environment, Path(work), hybrid=repository_hybrid_required())
        draft.write_bytes(root_draft().to_bytes())
        ceremony_step(environment, "image_repository", "sign-root", "--in", str(draft), "--out", str(signed))
        return image_repository_init(actor=actor, root=Metadata[Root].from_bytes(signed.read_bytes()))


def dev_rotate_root(*, actor: User, reason: str = "", directory: Path | None = None) -> ImageMetadata:
    """Development only: root N+1 from the registry's active keys (hybrid when the published root is or a model
    needs it; missing keys made as in dev_ceremony), signed on the dev offline token by old and new root keys."""
    environment = offline_dev_environment(directory)
    trusted = image_repository_root()
    hybrid = root_is_hybrid(trusted.signed) or repository_hybrid_required()
    with tempfile.TemporaryDirectory() as work:
        draft, signed, old = Path(work) / "draft.json", Path(work) / "root.json", Path(work) / "trusted.json"
        _dev_keys(actor, environment, Path(work), hybrid=hybrid)
        draft.write_bytes(root_draft_rotation(hybrid=hybrid).to_bytes())
        old.write_bytes(trusted.to_bytes())
        ceremony_step(
            environment,
            "image_repository",
            "sign-root",
            "--in",
            str(draft),
            "--out",
            str(signed),
            "--trusted",
            str(old),
        )
        return image_repository_rotate_root(
            actor=actor, root=Metadata[Root].from_bytes(signed.read_bytes()), reason=reason or "development rotation"
        )
