"""The development and CI token: a SoftHSM2 token under a directory of its own (`.data/softhsm/` by default).

`softhsm_setup(directory, token_label)` writes `softhsm2.conf` (token directory `tokens/` beside it) and, when no
token of that label exists yet, initialises one with a generated SO PIN and user PIN kept in `so.pin` and
`user.pin` (mode 0600, never committed). It is idempotent and takes an exclusive lock on `setup.lock`, so test
processes and `make run` starting at once initialise the token exactly once and never see it half made.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ota_project.hsm.token import TokenError


@dataclass(frozen=True)
class SoftHsmToken:
    """Where a SoftHSM2 token set up by `softhsm_setup` lives: its configuration and its user PIN file."""

    conf: Path
    pin_file: Path
    token_label: str


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _softhsm2_util() -> str:
    tool = shutil.which("softhsm2-util")
    if tool is None:
        raise TokenError("softhsm2-util not found: install Debian's softhsm2 (apt-get install softhsm2)")
    return tool


def _token_exists(tool: str, env: dict[str, str], token_label: str) -> bool:
    slots = subprocess.run([tool, "--show-slots"], env=env, capture_output=True, text=True, check=True).stdout
    return any(line.split(":", 1)[-1].strip() == token_label for line in slots.splitlines() if "Label:" in line)


def softhsm_setup(directory: Path, token_label: str) -> SoftHsmToken:
    """Make sure `directory` holds a SoftHSM2 configuration and an initialised token labelled `token_label`."""
    tool = _softhsm2_util()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    conf, pin_file, so_pin_file = directory / "softhsm2.conf", directory / "user.pin", directory / "so.pin"
    tokens = directory / "tokens"
    with (directory / "setup.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        tokens.mkdir(mode=0o700, exist_ok=True)
        if not conf.exists():
            _write_private(conf, f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
        env = {**os.environ, "SOFTHSM2_CONF": str(conf)}
        if not _token_exists(tool, env, token_label):
            user_pin, so_pin = secrets.token_hex(16), secrets.token_hex(16)
            # PIN files first: a token whose PIN was lost would be useless.
            _write_private(so_pin_file, so_pin + "\n")
            _write_private(pin_file, user_pin + "\n")
            subprocess.run(
                [tool, "--init-token", "--free", "--label", token_label, "--so-pin", so_pin, "--pin", user_pin],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
    return SoftHsmToken(conf=conf, pin_file=pin_file, token_label=token_label)
