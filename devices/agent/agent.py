"""The agent's state machine: check in, download (resumable, verified), stage encrypted, install to the inactive
slot, reboot, prove the new slot with a health check (boot-count fallback), commit or roll back; report each step.

Power loss may happen anywhere: every decision is persisted before it is acted on, so a fresh Agent on the same
state directory carries on. The committed slot is never written while a new image is on trial: there is always
a good slot to boot.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
import secrets
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devices.agent.state import StateStore, fsync_dir, other_slot, write_atomic
from devices.agent.transport import TransportError

logger = logging.getLogger("devices.agent")

MAX_TRIAL_BOOTS = 2  # a trial slot booted more often than this without being confirmed is given up
NONCE_BYTES = 12
WRITE_BLOCK = 64 * 1024
FINISHED_KEPT = 20

HealthCheck = Callable[[bytes, str], bool]
Hook = Callable[[str], None]


class PowerLoss(Exception):
    """Raised by test hooks to cut the power: the agent object is dropped and a new one built on the same dir."""


class VerifyError(Exception):
    """The downloaded image is not the offered one (length or sha256)."""


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None, retry_after: float = 0
) -> float:
    """Exponential backoff with (equal) jitter for the attempt-th consecutive failure, never below Retry-After."""
    ceiling = min(cap, base * 2 ** max(attempt - 1, 0))
    jittered = ceiling / 2 + (rng or random).uniform(0, ceiling / 2)
    return max(jittered, retry_after or 0)


def _sha256_file(path: os.PathLike[str] | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(WRITE_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class Agent:
    """One device. `step()` is one poll cycle; `run()` loops with backoff. A new Agent is a power-on."""

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        transport: Any,
        *,
        health_check: HealthCheck | None = None,
        hook: Hook | None = None,
        version: str = "1.0.0",
        release_counter: int = 1,
        factory_image: bytes = b"factory image\n",
        chunk_size: int = 64 * 1024,
        rng: random.Random | None = None,
    ):
        self.store = StateStore(state_dir, version=version, release_counter=release_counter, image=factory_image)
        self.state = self.store.data
        self.transport = transport
        self.health_check = health_check or (lambda image, slot: True)
        self.hook = hook or (lambda event: None)
        self.chunk_size = chunk_size
        self.rng = rng or random.Random()
        self.booted_slot: str | None = None  # None: powered on (or rebooting), not booted yet
        self._cleanup()

    # --- persistence helpers ---------------------------------------------------------------------------------

    @property
    def deployment(self) -> dict[str, Any] | None:
        return self.state["deployment"]

    def _save(self) -> None:
        self.store.save()

    def _enqueue(self, deployment_id: int, status: str, **fields: Any) -> None:
        """Queue a report (the caller saves): it is sent, with a fresh seq, until the server has answered it."""
        self.state["outbox"].append({"deployment_id": deployment_id, "status": status, "fields": fields})

    def _phase(self, phase: str, **changes: Any) -> None:
        """Move the current deployment to `phase`, queue its report, persist both at once, then the hook."""
        dep = self.deployment
        assert dep is not None
        dep["phase"] = phase
        self.state.update(changes)
        self._enqueue(dep["id"], phase)
        self._save()
        logger.info("deployment %s: %s", dep["id"], phase)
        self.hook(phase)

    def _finish(self, status: str, *, finished: bool, **fields: Any) -> None:
        """Close the current deployment with a terminal report (succeeded, rolled_back or failed)."""
        dep = self.deployment
        assert dep is not None
        self._enqueue(dep["id"], status, **fields)
        if finished:
            self.state["finished"] = (self.state["finished"] + [dep["id"]])[-FINISHED_KEPT:]
        self.state["deployment"] = None
        self.state["download_offset"] = 0
        self._save()
        logger.info("deployment %s: %s %s", dep["id"], status, fields)
        for path in (self.store.partial_path, self.store.staged_path):
            path.unlink(missing_ok=True)
        self.hook(status)

    def _cleanup(self) -> None:
        """Remove what a power loss left behind that the current phase does not need."""
        phase = self.deployment["phase"] if self.deployment else None
        if phase != "downloading":
            self.store.partial_path.unlink(missing_ok=True)
        if phase not in ("downloading", "downloaded", "installing"):
            self.store.staged_path.unlink(missing_ok=True)
        for stray in self.store.dir.glob("*.tmp"):
            stray.unlink()

    # --- the poll cycle --------------------------------------------------------------------------------------

    def step(self) -> float:
        """One poll cycle; returns the seconds to wait before the next one. Raises TransportError."""
        if self.booted_slot is None:
            self._boot()
        self._flush()
        dep = self.deployment
        if dep and dep["phase"] == "confirming" and self.booted_slot == self.state["trial_slot"]:
            self._commit()
            self._flush()
        answer = self._checkin()
        poll = float(answer.get("poll_interval_seconds") or 300)
        if self.deployment is None:
            offer = answer.get("offer")
            if not offer or offer["deployment_id"] in self.state["finished"]:
                return poll
            self._accept(offer)
            self._flush()
        self._advance()
        return 0.0 if self.deployment or self.booted_slot is None else poll

    def run(self, max_cycles: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        """Poll forever (or max_cycles times), backing off exponentially with jitter while calls fail."""
        failures = 0
        cycles = 0
        while max_cycles is None or cycles < max_cycles:
            cycles += 1
            try:
                delay = self.step()
                failures = 0
            except TransportError as exc:
                failures += 1
                delay = backoff_delay(failures, rng=self.rng, retry_after=exc.retry_after or 0)
                level = logging.WARNING if exc.retryable else logging.ERROR
                logger.log(level, "cycle failed (%s), retrying in %.1fs: %s", failures, delay, exc)
            sleep(delay)

    def _checkin(self) -> dict[str, Any]:
        slots = {
            name: {"version": slot["version"], "release_counter": slot["release_counter"]}
            for name, slot in self.state["slots"].items()
            if slot["present"]
        }
        body = {
            "slots": slots,
            "active_slot": self.booted_slot,
            "boot_count": self.state["boot_count"],
            "health": {},
        }
        return self.transport.post_json("/device/v1/checkin/", body)

    def _flush(self) -> None:
        """Send queued reports in order; each attempt takes a new seq, persisted before it is sent."""
        outbox = self.state["outbox"]
        while outbox:
            item = outbox[0]
            seq = self.store.take_seq()
            body = {"seq": seq, "status": item["status"], **item["fields"]}
            try:
                answer = self.transport.post_json(f"/device/v1/deployments/{item['deployment_id']}/status/", body)
                logger.info("reported %s (seq %s): %s", item["status"], seq, answer)
            except TransportError as exc:
                if exc.retryable:
                    raise
                logger.error("report %s (seq %s) refused, dropped: %s", item["status"], seq, exc)
            outbox.pop(0)
            self._save()
            self.hook(f"{item['status']}:sent")

    # --- boot, health and commit -----------------------------------------------------------------------------

    def _boot(self) -> None:
        """What the bootloader does at power-on: try the trial slot (counting boots) or boot the committed one."""
        trial = self.state["trial_slot"]
        if trial is None:
            self.booted_slot = self.state["active_slot"]
            return
        self.state["boot_count"] += 1
        self._save()
        if self.state["boot_count"] > MAX_TRIAL_BOOTS:
            self._fall_back(f"slot {trial} not confirmed after {MAX_TRIAL_BOOTS} boots")
            return
        self.booted_slot = trial
        logger.info("booted trial slot %s (boot %s)", trial, self.state["boot_count"])
        self.hook("booted")
        if self._healthy(trial):
            if self.deployment and self.deployment["phase"] != "confirming":
                self._phase("confirming")
        else:
            self._fall_back(f"slot {trial} failed its health check")

    def _healthy(self, slot: str) -> bool:
        image = self.store.slot_path(slot).read_bytes()
        dep = self.deployment
        if dep and hashlib.sha256(image).hexdigest() != dep["sha256"]:
            return False
        try:
            return bool(self.health_check(image, slot))
        except Exception:  # noqa: BLE001 - a crashing health check is a failed one
            logger.exception("health check raised")
            return False

    def _fall_back(self, why: str) -> None:
        """Back to the committed slot, which was never touched; the deployment ends rolled_back."""
        self.state["trial_slot"] = None
        self.state["boot_count"] = 0
        self.booted_slot = self.state["active_slot"]
        logger.warning("falling back to slot %s: %s", self.booted_slot, why)
        if self.deployment:
            # The server keeps the detail's head as the failure class: lead with the class.
            self._finish("rolled_back", finished=True, failure_class="boot", detail=f"boot: {why}"[:500])
        else:
            self._save()

    def _commit(self) -> None:
        trial = self.state["trial_slot"]
        slot = self.state["slots"][trial]
        self.state["active_slot"] = trial
        self.state["trial_slot"] = None
        self.state["boot_count"] = 0
        self._finish("succeeded", finished=True, booted_version=slot["version"], health_passed=True)

    # --- offer, download, install ----------------------------------------------------------------------------

    def _accept(self, offer: dict[str, Any]) -> None:
        artifact = offer["artifact"]
        self.state["deployment"] = {
            "id": offer["deployment_id"],
            "sha256": artifact["sha256"],
            "length": int(artifact["length"]),
            "url": artifact["url"],
            "release_version": offer["release_version"],
            "release_counter": int(offer["release_counter"]),
            "phase": "offered",
        }
        self.store.partial_path.unlink(missing_ok=True)
        self._phase("downloading", download_offset=0)

    def _advance(self) -> None:
        dep = self.deployment
        if dep is None:
            return
        if dep["phase"] == "downloading":
            self._download(dep)
            self._flush()
        if self.deployment and dep["phase"] == "downloaded":
            self._phase("installing")
            self._flush()
        if self.deployment and dep["phase"] == "installing":
            self._install(dep)
            self._flush()
        if self.deployment and dep["phase"] == "rebooting" and self.booted_slot != self.state["trial_slot"]:
            self.booted_slot = None  # reboot: the next cycle starts with the bootloader

    def _download(self, dep: dict[str, Any]) -> None:
        path = self.store.partial_path
        length = dep["length"]
        offset = min(self.state["download_offset"], path.stat().st_size if path.exists() else 0)
        with open(path, "ab") as file:
            file.truncate(offset)  # anything past the persisted offset was never acknowledged
        self.state["download_offset"] = offset
        if offset < length:
            with open(path, "r+b") as file:

                def sink(position: int, chunk: bytes) -> None:
                    if position != self.state["download_offset"]:
                        if position != 0:
                            raise TransportError(f"unexpected range start {position}", retryable=True)
                        file.truncate(0)  # the server sent the whole image: start over
                    if position + len(chunk) > length:
                        raise VerifyError(f"more than the offered {length} bytes")
                    file.seek(position)
                    file.write(chunk)
                    file.flush()
                    os.fsync(file.fileno())
                    self.state["download_offset"] = position + len(chunk)
                    self._save()
                    self.hook("download:chunk")

                try:
                    total = self.transport.download(
                        dep["url"], sha256=dep["sha256"], offset=offset, sink=sink, chunk_size=self.chunk_size
                    )
                    if total != length:
                        raise VerifyError(f"server has {total} bytes, the offer said {length}")
                except VerifyError as exc:
                    self._finish("failed", finished=False, failure_class="verify", detail=f"verify: {exc}")
                    return
                except TransportError as exc:
                    if exc.status == 416:
                        self.state["download_offset"] = 0
                        self._save()
                        raise TransportError("range refused, restarting the download", retryable=True) from exc
                    if not exc.retryable:
                        self._finish("failed", finished=False, failure_class="download", detail=f"download: {exc}")
                        return
                    raise
        if self.state["download_offset"] < length:
            raise TransportError("download ended early", retryable=True)
        # Verify length and sha256 of the whole image before anything else happens to it.
        size = path.stat().st_size
        digest = _sha256_file(path)
        if size != length or digest != dep["sha256"]:
            self._finish("failed", finished=False, failure_class="verify", detail=f"verify: sha256 {digest}")
            return
        self._stage(dep)

    def _stage(self, dep: dict[str, Any]) -> None:
        """Encrypt the verified image at rest (AES-GCM, device key, sha256 as associated data); drop the plaintext."""
        plaintext = self.store.partial_path.read_bytes()
        nonce = secrets.token_bytes(NONCE_BYTES)
        sealed = AESGCM(self.store.key).encrypt(nonce, plaintext, dep["sha256"].encode())
        write_atomic(self.store.staged_path, nonce + sealed)
        del plaintext
        dep["phase"] = "downloaded"
        self.state["download_offset"] = 0
        self._enqueue(dep["id"], "downloaded")
        self._save()
        self.store.partial_path.unlink(missing_ok=True)
        fsync_dir(self.store.dir)
        logger.info("deployment %s: downloaded, verified and staged", dep["id"])
        self.hook("downloaded")

    def _unstage(self, dep: dict[str, Any]) -> bytes | None:
        try:
            blob = self.store.staged_path.read_bytes()
            image = AESGCM(self.store.key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], dep["sha256"].encode())
        except (FileNotFoundError, InvalidTag, ValueError):
            return None
        return image if hashlib.sha256(image).hexdigest() == dep["sha256"] else None

    def _install(self, dep: dict[str, Any]) -> None:
        """Decrypt into the inactive slot (never the committed one), fsync, then arm the trial boot and reboot."""
        image = self._unstage(dep)
        if image is None:
            self._finish("failed", finished=False, failure_class="install", detail="install: staged image unreadable")
            return
        target = other_slot(self.state["active_slot"])
        self.state["slots"][target] = {"version": "", "release_counter": 0, "present": False}
        self._save()  # the slot is being overwritten: never report or boot it half-written
        with open(self.store.slot_path(target), "wb") as file:
            half = len(image) // 2
            file.write(image[:half])
            self.hook("install:partial")
            file.write(image[half:])
            file.flush()
            os.fsync(file.fileno())
        fsync_dir(self.store.dir)
        self.state["slots"][target] = {
            "version": dep["release_version"],
            "release_counter": dep["release_counter"],
            "present": True,
        }
        self.store.staged_path.unlink(missing_ok=True)
        self._phase("rebooting", trial_slot=target, boot_count=0)
