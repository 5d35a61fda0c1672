"""The director's development key ceremony (sibling of devices.firmware.repository.ceremony): its root key on the
same SoftHSM2 "offline" development token under DATA_DIR, for `make run`, demos and drills only. Production makes
the director root on a real offline token (README, "The director").
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

from devices.firmware.director.models import DirectorRoot
from devices.firmware.director.services import director_init, director_root_draft
from devices.firmware.keys.selectors import signing_key_active
from devices.firmware.keys.services import key_create, key_import_public
from devices.firmware.repository.ceremony import DEV_OFFLINE_TOKEN
from ota_project.errors import Conflict
from ota_project.hsm.roles import KeyRole
from ota_project.hsm.softhsm import softhsm_setup


def _environment(directory: Path) -> dict[str, str]:
    """The child processes' environment: the development offline token (its own SoftHSM2 configuration)."""
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


def director_dev_ceremony(*, actor: User, directory: Path | None = None) -> DirectorRoot:
    """Development only: make the director-root key on the development offline token (a child process), the
    director key on the server's token, and start the director from a root v1 signed on that token."""
    environment = _environment(directory or Path(settings.DATA_DIR) / "softhsm-offline-dev")
    with tempfile.TemporaryDirectory() as work:
        public_key, draft, signed = Path(work) / "root.pem", Path(work) / "root.draft.json", Path(work) / "root.json"
        if signing_key_active(KeyRole.DIRECTOR_ROOT) is None:
            _manage(
                environment, "keys", "create", "--role", KeyRole.DIRECTOR_ROOT, "--offline", "--out", str(public_key)
            )
            key_import_public(
                actor=actor,
                role=KeyRole.DIRECTOR_ROOT,
                public_key=public_key.read_text(),
                reason="development key ceremony",
            )
        if signing_key_active(KeyRole.DIRECTOR) is None:
            key_create(actor=actor, role=KeyRole.DIRECTOR, reason="development key ceremony")
        draft.write_bytes(director_root_draft().to_bytes())
        _manage(environment, "director", "sign-root", "--in", str(draft), "--out", str(signed))
        return director_init(actor=actor, root=Metadata[Root].from_bytes(signed.read_bytes()))
