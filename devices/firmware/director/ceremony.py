"""The director's development key ceremony (sibling of devices.firmware.repository.ceremony): its root key on the
same SoftHSM2 "offline" development token under DATA_DIR, for `make run`, demos and drills only. Production makes
the director root on a real offline token (README, "The director").
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from django.contrib.auth.models import User
from tuf.api.metadata import Metadata, Root

from devices.firmware.director.models import DirectorRoot
from devices.firmware.director.services import director_init, director_root_draft
from devices.firmware.repository.ceremony import ceremony_step, dev_key_ensure, offline_dev_environment
from ota_project.hsm.roles import KeyRole


def director_dev_ceremony(*, actor: User, directory: Path | None = None) -> DirectorRoot:
    """Development only: make the director-root key on the development offline token (a child process), the
    director key on the server's token, and start the director from a root v1 signed on that token."""
    environment = offline_dev_environment(directory)
    with tempfile.TemporaryDirectory() as work:
        draft, signed = Path(work) / "root.draft.json", Path(work) / "root.json"
        for key_role in (KeyRole.DIRECTOR_ROOT, KeyRole.DIRECTOR):
            dev_key_ensure(actor, environment, Path(work), key_role)
        draft.write_bytes(director_root_draft().to_bytes())
        ceremony_step(environment, "director", "sign-root", "--in", str(draft), "--out", str(signed))
        return director_init(actor=actor, root=Metadata[Root].from_bytes(signed.read_bytes()))
