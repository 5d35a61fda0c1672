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
from devices.firmware.repository.services import ROLE_KEYS, image_repository_init, root_draft
from ota_project.errors import Conflict
from ota_project.hsm.roles import OFFLINE_ROLES, KeyRole
from ota_project.hsm.softhsm import softhsm_setup

DEV_OFFLINE_TOKEN = "ota-offline-dev"


def _ceremony_environment(directory: Path) -> dict[str, str]:
    token = softhsm_setup(directory, DEV_OFFLINE_TOKEN)
    return {
        **os.environ,
        "SOFTHSM2_CONF": str(token.conf),
        "OTA_PKCS11_OFFLINE_TOKEN": DEV_OFFLINE_TOKEN,
        "OTA_PKCS11_OFFLINE_PIN": token.pin_file.read_text().strip(),
        "OTA_PKCS11_LABEL_PREFIX": settings.PKCS11_LABEL_PREFIX,
    }


def _manage(environment: dict[str, str], *arguments: str) -> None:
    done = subprocess.run(
        [sys.executable, str(Path(settings.BASE_DIR) / "manage.py"), *arguments],
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise Conflict(f"ceremony step `{' '.join(arguments[:2])}` failed: {done.stderr.strip()[-500:]}")


def dev_ceremony(*, actor: User, directory: Path | None = None) -> ImageMetadata:
    """Development only: make the root key on a SoftHSM2 token under DATA_DIR/softhsm-offline-dev, the missing
    online keys on the server's token, and start the image repository from a root v1 signed on that token."""
    environment = _ceremony_environment(directory or Path(settings.DATA_DIR) / "softhsm-offline-dev")
    with tempfile.TemporaryDirectory() as work:
        public_key, draft, signed = Path(work) / "root.pem", Path(work) / "root.draft.json", Path(work) / "root.json"
        if signing_key_active(KeyRole.ROOT) is None:
            _manage(environment, "keys", "create", "--role", KeyRole.ROOT, "--offline", "--out", str(public_key))
            key_import_public(
                actor=actor, role=KeyRole.ROOT, public_key=public_key.read_text(), reason="development key ceremony"
            )
        for key_roles in ROLE_KEYS.values():
            for key_role in key_roles:
                if key_role not in OFFLINE_ROLES and signing_key_active(key_role) is None:
                    key_create(actor=actor, role=key_role, reason="development key ceremony")
        draft.write_bytes(root_draft().to_bytes())
        _manage(environment, "image_repository", "sign-root", "--in", str(draft), "--out", str(signed))
        return image_repository_init(actor=actor, root=Metadata[Root].from_bytes(signed.read_bytes()))
