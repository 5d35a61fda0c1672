"""The agent's persistent state: one JSON file written atomically, slot image files and the device key."""

from __future__ import annotations

import copy
import json
import os
import secrets
from pathlib import Path
from typing import Any

STATE_FILE = "state.json"
KEY_FILE = "device.key"
STAGED_FILE = "staged.enc"
PARTIAL_FILE = "download.part"
SLOTS = ("a", "b")


def other_slot(slot: str) -> str:
    return "b" if slot == "a" else "a"


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write temp, fsync, rename, fsync the directory: after a power loss the file is old or new, never torn."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def initial_state(version: str, release_counter: int) -> dict[str, Any]:
    return {
        "slots": {
            "a": {"version": version, "release_counter": release_counter, "present": True},
            "b": {"version": "", "release_counter": 0, "present": False},
        },
        "active_slot": "a",  # the committed, known-good slot
        "trial_slot": None,  # set while a new slot waits to prove itself after a reboot
        "boot_count": 0,  # boots of the trial slot so far
        "next_seq": 1,
        "deployment": None,  # {id, sha256, length, url, release_version, release_counter, phase}
        "download_offset": 0,
        "outbox": [],  # reports not yet accepted by the server: [{deployment_id, status, ...}]
        "finished": [],  # ids of deployments this device has finished (offers for them are ignored)
        "telemetry": [],  # KPI samples not yet accepted by the server
        "unexpected_reboots": 0,  # power-ons in the middle of an update since the last sample
    }


class StateStore:
    """The state directory: state.json, device.key, slot_a.img / slot_b.img, download.part, staged.enc."""

    def __init__(self, directory: str | os.PathLike[str], *, version: str, release_counter: int, image: bytes):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / STATE_FILE
        if self.path.exists():
            # Keys added by newer agents get their initial values; nothing already stored is changed.
            defaults = initial_state(version, release_counter)
            self.data: dict[str, Any] = {**defaults, **json.loads(self.path.read_text())}
        else:
            # First start: the factory image in slot a, then the state (the state is written last).
            write_atomic(self.slot_path("a"), image)
            self.data = initial_state(version, release_counter)
            self.save()
        self.key = self._load_key()

    def _load_key(self) -> bytes:
        path = self.dir / KEY_FILE
        if not path.exists():
            write_atomic(path, secrets.token_bytes(32), mode=0o600)
        key = path.read_bytes()
        if len(key) != 32:
            raise RuntimeError(f"{path} must hold 32 bytes")
        return key

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.data)

    def save(self) -> None:
        write_atomic(self.path, json.dumps(self.data, indent=1, sort_keys=True).encode())

    def take_seq(self) -> int:
        """The next sequence number, persisted before the caller may send it: never reused after a restart."""
        seq = int(self.data["next_seq"])
        self.data["next_seq"] = seq + 1
        self.save()
        return seq

    def slot_path(self, slot: str) -> Path:
        return self.dir / f"slot_{slot}.img"

    @property
    def staged_path(self) -> Path:
        return self.dir / STAGED_FILE

    @property
    def partial_path(self) -> Path:
        return self.dir / PARTIAL_FILE
