"""The agent's state machine: check in, download (resumable, verified), stage encrypted, install to the inactive
slot, reboot, prove the new slot with a health check (boot-count fallback), commit or roll back; report each step.

Power loss may happen anywhere: every decision is persisted before it is acted on, so a fresh Agent on the same
state directory carries on. The committed slot is never written while a new image is on trial: there is always
a good slot to boot.

The logic is written once, as generator "flows" that yield the network calls they need (`PostJson`, `Download`)
and receive their answers (or have the transport's exception thrown in). Two drivers run the same flows:
`step()`/`run()` with a blocking transport (the CLI, one device per process) and `astep()`/`arun()` with an
asyncio transport (the fleet drill: thousands of devices in one event loop, no thread per device).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devices.agent.attestation import BOOTED_IMAGE, MAX_LINEAGE, evidence_sign, load_device_key
from devices.agent.limits import TRANSFER_DEADLINE, AnswerTooLarge, TransferAborted, TransferLimits
from devices.agent.state import StateStore, fsync_dir, other_slot, write_atomic
from devices.agent.transport import TransportError
from devices.agent.verify import (
    FetchBytes,
    Trust,
    UntrustedUpdate,
    Verification,
    VerifiedTarget,
    Verifier,
    file_matches,
    trusted_now,
)

logger = logging.getLogger("devices.agent")

MAX_TRIAL_BOOTS = 2  # a trial slot booted more often than this without being confirmed is given up
NONCE_BYTES = 12
WRITE_BLOCK = 64 * 1024
FINISHED_KEPT = 20
TELEMETRY_KEPT = 100  # samples kept while the server cannot take them (oldest dropped first)
TELEMETRY_BATCH = 500  # the device API's limit per batch
DEFAULT_POLL_SECONDS = 300.0
# Statuses only the server sets: the deployment is over whatever the device does next.
SERVER_DECIDED = frozenset({"cancelled", "timed_out", "skipped"})

HealthCheck = Callable[[bytes, str], bool]
Hook = Callable[[str], None]
Probe = Callable[[str], dict[str, Any]]
T = TypeVar("T")


class PowerLoss(Exception):
    """Raised by test hooks to cut the power: the agent object is dropped and a new one built on the same dir."""


class VerifyError(Exception):
    """The downloaded image is not the offered one (length or sha256)."""


class _TooLarge(Exception):
    """A metadata answer larger than the verification allows for it."""


@dataclass(frozen=True)
class PostJson:
    """A JSON POST the flow needs; the driver answers with the decoded JSON body."""

    path: str
    body: dict[str, Any]


@dataclass(frozen=True)
class Download:
    """A ranged image download; the transport feeds sink(position, chunk) and the driver answers the full length."""

    url: str
    sha256: str
    offset: int
    sink: Callable[[int, bytes], None]
    chunk_size: int
    max_length: int | None = None  # the most bytes the file may have (refused before reading when declared larger)
    limits: TransferLimits | None = None  # deadline and throughput floor, enforced while bytes flow


Call = PostJson | Download
Flow = Generator[Call, Any, T]


def backoff_delay(
    attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random | None = None, retry_after: float = 0
) -> float:
    """Exponential backoff with (equal) jitter for the attempt-th consecutive failure, never below Retry-After."""
    ceiling = min(cap, base * 2.0 ** max(attempt - 1, 0))
    jittered = ceiling / 2 + (rng.uniform if rng else random.uniform)(0, ceiling / 2)
    return max(jittered, retry_after or 0)


def _sha256_file(path: os.PathLike[str] | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(WRITE_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def _epoch(value: Any) -> float | None:
    """An ISO 8601 time from the server as epoch seconds (None when absent or unreadable)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


def _utc_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def _deployment_of(offer: dict[str, Any], verified: VerifiedTarget | None) -> dict[str, Any]:
    """The agent's record of an offered deployment; with `verified`, hash, length and counter are the signed ones."""
    artifact = offer["artifact"]
    return {
        "id": offer["deployment_id"],
        "sha256": verified.sha256 if verified else artifact["sha256"],
        "length": verified.length if verified else int(artifact["length"]),
        "url": artifact["url"],
        "release_version": offer["release_version"],
        "release_counter": verified.release_counter if verified else int(offer["release_counter"]),
        "deadline_at": _epoch(offer.get("deadline_at")),
        "phase": "offered",
        "kpis": {},
        # The signed target the image must match before it is staged (None on the legacy path).
        "verified": _target_state(verified) if verified else None,
    }


def _target_state(target: VerifiedTarget) -> dict[str, Any]:
    return {
        "path": target.path,
        "length": target.length,
        "sha256": target.sha256,
        "release_counter": target.release_counter,
        "deployment_id": target.deployment_id,
        "director_version": target.director_version,
        "hashes": dict(target.hashes),
    }


def _target_from_state(stored: dict[str, Any]) -> VerifiedTarget:
    return VerifiedTarget(**stored)


def _perform(transport: Any, call: Call) -> Any:
    if isinstance(call, PostJson):
        return transport.post_json(call.path, call.body)
    return transport.download(
        call.url,
        sha256=call.sha256,
        offset=call.offset,
        sink=call.sink,
        chunk_size=call.chunk_size,
        max_length=call.max_length,
        limits=call.limits,
    )


async def _aperform(transport: Any, call: Call) -> Any:
    if isinstance(call, PostJson):
        return await transport.post_json(call.path, call.body)
    return await transport.download(
        call.url,
        sha256=call.sha256,
        offset=call.offset,
        sink=call.sink,
        chunk_size=call.chunk_size,
        max_length=call.max_length,
        limits=call.limits,
    )


def drive(flow: Flow[T], perform: Callable[[Call], Any]) -> T:
    """Run a flow with a blocking transport: each yielded call is performed, its answer or error sent back."""
    try:
        call = next(flow)
        while True:
            try:
                answer = perform(call)
            except Exception as exc:  # noqa: BLE001 - the flow decides what it handles (the rest propagates)
                call = flow.throw(exc)
            else:
                call = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result


async def adrive(flow: Flow[T], perform: Callable[[Call], Awaitable[Any]]) -> T:
    """Run a flow with an asyncio transport (same semantics as `drive`)."""
    try:
        call = next(flow)
        while True:
            try:
                answer = await perform(call)
            except Exception as exc:  # noqa: BLE001 - the flow decides what it handles (the rest propagates)
                call = flow.throw(exc)
            else:
                call = flow.send(answer)
    except StopIteration as stop:
        result: T = stop.value
        return result


class Agent:
    """One device. `step()` (or `await astep()`) is one poll cycle; `run()`/`arun()` loop with backoff.

    A new Agent on an existing state directory is a power-on. `health_check(image, slot)` is the device's own
    post-boot check; `probe(slot)` measures boot KPIs (boot_time_s, gps_fix_s, sensor_calibrated) after a boot.
    """

    def __init__(
        self,
        state_dir: str | os.PathLike[str],
        transport: Any,
        *,
        health_check: HealthCheck | None = None,
        hook: Hook | None = None,
        probe: Probe | None = None,
        version: str = "1.0.0",
        release_counter: int = 1,
        factory_image: bytes = b"factory image\n",
        chunk_size: int = 64 * 1024,
        rng: random.Random | None = None,
        backoff_base: float = 1.0,
        backoff_cap: float = 300.0,
        poll_jitter: float = 0.1,
        clock: Callable[[], float] = time.time,
        trust: Trust | None = None,
        boot_samples: bool = False,
        transfer_limits: TransferLimits | None = None,
        attestation_key: str | os.PathLike[str] | None = None,
    ):
        self.store = StateStore(state_dir, version=version, release_counter=release_counter, image=factory_image)
        self.state = self.store.data
        # Provisioned with trust roots: every offer is verified against both repositories (devices.agent.verify).
        # Without them (no image repository in use) only the offer's sha256 and length are checked: the legacy path.
        self.verifier = Verifier(self.store.dir, trust) if trust is not None else None
        # Metadata fetched for the offer being verified, kept across cycles that a dropped link cut short, so a flaky
        # link makes progress instead of starting over (memory only: a power loss starts the verification again).
        self._offer_fetches: dict[int, dict[str, bytes | None]] = {}
        self.state.setdefault("trusted_time", 0.0)
        self.transport = transport
        self.health_check = health_check or (lambda image, slot: True)
        self.hook = hook or (lambda event: None)
        self.probe = probe
        # Report the boot KPIs of the running release after booting its committed slot (a sample naming no
        # deployment): the fleet's own baseline that health gates judge a new release against.
        self.boot_samples = boot_samples
        self.chunk_size = chunk_size
        # Per transfer: a wall-clock cap (never past the offer's deadline either) and a throughput floor.
        self.transfer_limits = transfer_limits or TransferLimits()
        # Attestation: the device key (by default its TLS client key) signs the evidence over the server's nonce.
        # Without a key (the secret-credential development mode) the agent sends no evidence.
        tls = getattr(transport, "tls", None)
        key_path = attestation_key if attestation_key is not None else (tls.key if tls is not None else None)
        self.attestation_key = load_device_key(key_path) if key_path is not None else None
        self.state.setdefault("attestation_nonce", None)
        if not self.state.setdefault("lineage", []):
            # First start (or an agent from before attestation): the chain starts with the committed image.
            self.state["lineage"] = [self._slot_sha256(self.state["active_slot"])]
            self._save()
        self.rng = rng or random.Random()
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.poll_jitter = poll_jitter
        self.clock = clock
        self.booted_slot: str | None = None  # None: powered on (or rebooting), not booted yet
        self._download_started: tuple[float, int] | None = None  # (when, offset) of the current download attempt
        self._cleanup()
        self._count_power_on()

    # --- persistence helpers ---------------------------------------------------------------------------------

    @property
    def deployment(self) -> dict[str, Any] | None:
        deployment: dict[str, Any] | None = self.state["deployment"]
        return deployment

    def _save(self) -> None:
        self.store.save()

    def _count_power_on(self) -> None:
        """A power-on in the middle of an update (other than the planned reboot) is an unexpected reboot."""
        dep = self.deployment
        if dep and dep["phase"] not in ("rebooting", "confirming"):
            self.state["unexpected_reboots"] += 1
            self._save()

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
        """Close the current deployment with a terminal report (succeeded, rolled_back or failed) and its KPIs."""
        dep = self.deployment
        assert dep is not None
        self._enqueue(dep["id"], status, **fields)
        self._sample(dep)
        if finished:
            self.state["finished"] = (self.state["finished"] + [dep["id"]])[-FINISHED_KEPT:]
        self.state["deployment"] = None
        self.state["download_offset"] = 0
        self._save()
        logger.info("deployment %s: %s %s", dep["id"], status, fields)
        for path in (self.store.partial_path, self.store.staged_path):
            path.unlink(missing_ok=True)
        self.hook(status)

    def _sample(self, dep: dict[str, Any]) -> None:
        """Queue one telemetry sample for a finished deployment: only what health gates and KPIs need."""
        kpis = dep.get("kpis", {})
        sample = {
            "deployment_id": dep["id"],
            "reported_at": _utc_iso(self.clock()),
            "unexpected_reboots": self.state["unexpected_reboots"],
            **{k: kpis[k] for k in ("install_duration_s", "link_kbps", "boot_time_s", "gps_fix_s") if k in kpis},
        }
        if "sensor_calibrated" in kpis:
            sample["sensor_calibrated"] = bool(kpis["sensor_calibrated"])
        self.state["telemetry"] = (self.state["telemetry"] + [sample])[-TELEMETRY_KEPT:]
        self.state["unexpected_reboots"] = 0

    def _sample_boot(self, slot: str) -> None:
        """Queue the boot KPIs of the committed slot's release (no deployment: the server counts it toward the
        version it knows the device runs). A broken probe costs the sample, never the boot."""
        if self.probe is None:
            return
        try:
            measured = self.probe(slot)
        except Exception:  # noqa: BLE001
            logger.exception("boot probe raised")
            return
        sample: dict[str, Any] = {
            "reported_at": _utc_iso(self.clock()),
            **{k: measured[k] for k in ("boot_time_s", "gps_fix_s") if k in measured},
        }
        if "sensor_calibrated" in measured:
            sample["sensor_calibrated"] = bool(measured["sensor_calibrated"])
        if len(sample) > 1:
            self.state["telemetry"] = (self.state["telemetry"] + [sample])[-TELEMETRY_KEPT:]
            self._save()

    def _cleanup(self) -> None:
        """Remove what a power loss left behind that the current phase does not need."""
        phase = self.deployment["phase"] if self.deployment else None
        if phase != "downloading":
            self.store.partial_path.unlink(missing_ok=True)
        if phase not in ("downloading", "downloaded", "installing"):
            self.store.staged_path.unlink(missing_ok=True)
        for stray in self.store.dir.glob("*.tmp"):
            stray.unlink()

    # --- drivers -----------------------------------------------------------------------------------------------

    def step(self) -> float:
        """One poll cycle on a blocking transport; returns the seconds to wait before the next one."""
        return drive(self._cycle(), lambda call: _perform(self.transport, call))

    async def astep(self) -> float:
        """One poll cycle on an asyncio transport; returns the seconds to wait before the next one."""
        return await adrive(self._cycle(), lambda call: _aperform(self.transport, call))

    def _next_delay(self, outcome: float | TransportError, failures: int) -> tuple[float, int]:
        """(seconds to wait, consecutive failures) after a cycle: the poll interval, or backoff with jitter."""
        if isinstance(outcome, TransportError):
            failures += 1
            delay = backoff_delay(
                failures,
                base=self.backoff_base,
                cap=self.backoff_cap,
                rng=self.rng,
                retry_after=outcome.retry_after or 0,
            )
            level = logging.WARNING if outcome.retryable else logging.ERROR
            logger.log(level, "cycle failed (%s), retrying in %.1fs: %s", failures, delay, outcome)
            return delay, failures
        # Spread idle polls a little so a fleet does not check in in lockstep (never sooner than asked).
        return outcome * (1 + self.rng.uniform(0, self.poll_jitter)) if outcome else 0.0, 0

    def run(self, max_cycles: int | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        """Poll forever (or max_cycles times), backing off exponentially with jitter while calls fail."""
        failures = 0
        cycles = 0
        while max_cycles is None or cycles < max_cycles:
            cycles += 1
            try:
                outcome: float | TransportError = self.step()
            except TransportError as exc:
                outcome = exc
            delay, failures = self._next_delay(outcome, failures)
            sleep(delay)

    async def arun(
        self,
        max_cycles: int | None = None,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        stop: asyncio.Event | None = None,
    ) -> None:
        """The asyncio `run()`: poll until `stop` is set (or max_cycles), backing off while calls fail."""
        failures = 0
        cycles = 0
        while (max_cycles is None or cycles < max_cycles) and not (stop and stop.is_set()):
            cycles += 1
            try:
                outcome: float | TransportError = await self.astep()
            except TransportError as exc:
                outcome = exc
            delay, failures = self._next_delay(outcome, failures)
            if stop is None:
                await sleep(delay)
            elif delay > 0:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                except TimeoutError:
                    pass
            else:
                await asyncio.sleep(0)

    # --- the poll cycle --------------------------------------------------------------------------------------

    def _cycle(self) -> Flow[float]:
        """One poll cycle. Raises TransportError (the caller backs off)."""
        if self.booted_slot is None:
            self._boot()
        yield from self._flush()
        dep = self.deployment
        if dep and dep["phase"] == "confirming" and self.booted_slot == self.state["trial_slot"]:
            self._commit()
            yield from self._flush()
        if self.booted_slot is None:  # the server ended the deployment under trial: boot the committed slot
            self._boot()
        answer = yield from self._checkin()
        poll = float(answer.get("poll_interval_seconds") or DEFAULT_POLL_SECONDS)
        offer = answer.get("offer")
        if self.deployment is None:
            if offer and offer["deployment_id"] not in self.state["finished"]:
                verified = (yield from self._verify_offer(offer)) if self.verifier is not None else None
                if self.deployment is None and (self.verifier is None or verified is not None):
                    self._accept(offer, verified)
                yield from self._flush()
        elif offer:
            self._refresh_url(offer)
        yield from self._advance()
        yield from self._send_telemetry()
        return 0.0 if self.deployment or self.booted_slot is None else poll

    def _slot_sha256(self, slot: str) -> str:
        """The sha256 of the image in `slot`, remembered in the state (set at install; hashed once otherwise)."""
        images = self.state.setdefault("slot_images", {})
        if not images.get(slot):
            path = self.store.slot_path(slot)
            images[slot] = _sha256_file(path) if path.exists() else ""
            self._save()
        return str(images[slot])

    def _evidence(self) -> dict[str, Any] | None:
        """Signed evidence over the server's last nonce, or None (no key or no nonce). The nonce is forgotten, and
        that persisted, before the check-in carrying it is sent: a nonce is used once, even if the answer is lost."""
        nonce = self.state.get("attestation_nonce")
        if self.attestation_key is None or not nonce:
            return None
        self.state["attestation_nonce"] = None
        self._save()
        booted = self.booted_slot or self.state["active_slot"]
        measurements = {BOOTED_IMAGE: self._slot_sha256(booted)}
        return evidence_sign(self.attestation_key, nonce, measurements, list(self.state["lineage"]))

    def _checkin(self) -> Flow[dict[str, Any]]:
        """Check in; when the server withholds an offer for want of fresh evidence, once more with its new nonce."""
        answer = yield from self._checkin_once()
        if answer.get("attestation_required") and self.state.get("attestation_nonce") and self.attestation_key:
            answer = yield from self._checkin_once()
        return answer

    def _checkin_once(self) -> Flow[dict[str, Any]]:
        slots = {
            name: {"version": slot["version"], "release_counter": slot["release_counter"]}
            for name, slot in self.state["slots"].items()
            if slot["present"]
        }
        body = {
            "slots": slots,
            "active_slot": self.booted_slot,
            "boot_count": self.state["boot_count"],
            "health": {"on_trial": self.state["trial_slot"] is not None},
        }
        evidence = self._evidence()
        if evidence is not None:
            body["attestation"] = evidence
        answer = yield PostJson("/device/v1/checkin/", body)
        if not isinstance(answer, dict):
            return {}
        nonce = answer.get("attestation_nonce")
        if isinstance(nonce, str) and nonce != self.state.get("attestation_nonce"):
            self.state["attestation_nonce"] = nonce
            self._save()
        return answer

    def _flush(self) -> Flow[None]:
        """Send queued reports in order; each attempt takes a new seq, persisted before it is sent."""
        while self.state["outbox"]:
            item = self.state["outbox"][0]
            seq = self.store.take_seq()
            body = {"seq": seq, "status": item["status"], **item["fields"]}
            answer: object = {}  # the server's JSON: checked to be an object before use
            try:
                answer = yield PostJson(f"/device/v1/deployments/{item['deployment_id']}/status/", body)
                logger.info("reported %s (seq %s): %s", item["status"], seq, answer)
            except TransportError as exc:
                if exc.retryable:
                    raise
                logger.error("report %s (seq %s) refused, dropped: %s", item["status"], seq, exc)
            self.state["outbox"].pop(0)
            self._save()
            self.hook(f"{item['status']}:sent")
            self._heed(item["deployment_id"], answer if isinstance(answer, dict) else {})

    def _heed(self, deployment_id: int, answer: dict[str, Any]) -> None:
        """Take the server's view of the current deployment from a status answer: new deadline, or its end."""
        dep = self.deployment
        if not dep or dep["id"] != deployment_id:
            return
        if answer.get("status") in SERVER_DECIDED:
            self._abandon(f"the server ended it as {answer['status']}")
        elif "deadline_at" in answer:
            dep["deadline_at"] = _epoch(answer["deadline_at"])
            self._save()

    def _abandon(self, why: str) -> None:
        """Drop a deployment the server ended (halt, cancel, deadline): nothing more is installed or committed.

        An image on trial is never committed then: the device goes back to its committed slot, which the server
        still believes it runs."""
        dep = self.deployment
        assert dep is not None
        trial = self.state["trial_slot"]
        if trial is not None:
            self.state["trial_slot"] = None
            self.state["boot_count"] = 0
            if self.booted_slot == trial:
                self.booted_slot = None  # reboot into the committed slot
        self.state["outbox"] = [item for item in self.state["outbox"] if item["deployment_id"] != dep["id"]]
        self.state["finished"] = (self.state["finished"] + [dep["id"]])[-FINISHED_KEPT:]
        self.state["deployment"] = None
        self.state["download_offset"] = 0
        self._save()
        for path in (self.store.partial_path, self.store.staged_path):
            path.unlink(missing_ok=True)
        logger.warning("deployment %s abandoned: %s", dep["id"], why)
        self.hook("abandoned")

    def _send_telemetry(self) -> Flow[None]:
        """Post queued KPI samples in one batch; a refused batch (4xx) is dropped, a failed one kept for later.

        Telemetry never holds up an update: only a server asking to slow down (429/503) ends the cycle."""
        samples = self.state["telemetry"][:TELEMETRY_BATCH]
        if not samples:
            return
        try:
            yield PostJson("/device/v1/telemetry/", {"samples": samples})
        except TransportError as exc:
            if exc.status in (429, 503):
                raise
            if exc.retryable:
                logger.warning("telemetry batch of %s not delivered, kept: %s", len(samples), exc)
                return
            logger.error("telemetry batch of %s refused, dropped: %s", len(samples), exc)
        self.state["telemetry"] = self.state["telemetry"][len(samples) :]
        self._save()
        self.hook("telemetry:sent")

    # --- boot, health and commit -----------------------------------------------------------------------------

    def _boot(self) -> None:
        """What the bootloader does at power-on: try the trial slot (counting boots) or boot the committed one."""
        trial = self.state["trial_slot"]
        if trial is None:
            self.booted_slot = self.state["active_slot"]
            if self.boot_samples:
                self._sample_boot(self.booted_slot)
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
                self._measure_boot(trial)
                self._phase("confirming")
        else:
            self._fall_back(f"slot {trial} failed its health check")

    def _measure_boot(self, slot: str) -> None:
        dep = self.deployment
        if dep is None or self.probe is None:
            return
        try:
            measured = self.probe(slot)
        except Exception:  # noqa: BLE001 - a broken probe costs KPIs, never the update
            logger.exception("boot probe raised")
            return
        dep.setdefault("kpis", {}).update(
            {k: v for k, v in measured.items() if k in ("boot_time_s", "gps_fix_s", "sensor_calibrated")}
        )

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
        # The committed image joins the firmware lineage the device attests to (saved with the report below).
        self.state["lineage"] = (self.state["lineage"] + [self._slot_sha256(trial)])[-MAX_LINEAGE:]
        self._finish("succeeded", finished=True, booted_version=slot["version"], health_passed=True)

    # --- offer, download, install ----------------------------------------------------------------------------

    def _accept(self, offer: dict[str, Any], verified: VerifiedTarget | None = None) -> None:
        self.state["deployment"] = _deployment_of(offer, verified)
        self.store.partial_path.unlink(missing_ok=True)
        committed = int(self.state["slots"][self.state["active_slot"]]["release_counter"])
        if int(self.state["deployment"]["release_counter"]) < committed:
            # Anti-rollback on the device too: whatever the server offers, the committed counter never goes down.
            detail = f"anti_rollback: offered counter {offer['release_counter']} is below the committed {committed}"
            self._finish("failed", finished=True, failure_class="anti_rollback", detail=detail)
            return
        self._phase("downloading", download_offset=0)

    # --- verification against the image repository and the director ----------------------------------------------

    def _trusted_now(self) -> datetime:
        return trusted_now(self.clock(), float(self.state["trusted_time"]))

    def _trust_time(self, now: datetime) -> None:
        """Remember the time just trusted (monotonic, persisted): a clock set back later cannot go below it."""
        self.state["trusted_time"] = max(float(self.state["trusted_time"]), now.timestamp())
        self._save()

    def _verify_offer(self, offer: dict[str, Any]) -> Flow[VerifiedTarget | None]:
        """Verify an offer fully before anything is fetched; a refusal ends it as failed/untrusted (None)."""
        assert self.verifier is not None
        committed = int(self.state["slots"][self.state["active_slot"]]["release_counter"])
        now = self._trusted_now()
        fetched = self._offer_fetches.setdefault(int(offer["deployment_id"]), {})
        try:
            verified: VerifiedTarget = yield from self._verification(
                self.verifier.verify_offer(offer, committed_counter=committed, now=now), fetched
            )
        except UntrustedUpdate as exc:
            self._offer_fetches.clear()
            self.state["deployment"] = _deployment_of(offer, None)  # as offered, only to report its refusal
            self._finish("failed", finished=True, failure_class="untrusted", detail=f"untrusted: {exc}"[:500])
            return None
        self._offer_fetches.clear()
        self._trust_time(now)
        self.hook("verified")
        return verified

    def _verification(self, verification: Verification, fetched: dict[str, bytes | None] | None = None) -> Flow[Any]:
        """Drive a verification generator: each FetchBytes it yields is fetched through the agent's transport
        (or taken from `fetched`, what an earlier, interrupted attempt for the same offer already fetched)."""
        try:
            request = next(verification)
            while True:
                if fetched is not None and request.url in fetched:
                    data = fetched[request.url]
                else:
                    data = yield from self._get_bytes(request)
                    if fetched is not None:
                        fetched[request.url] = data
                request = verification.send(data)
        except StopIteration as stop:
            return stop.value

    def _get_bytes(self, request: FetchBytes) -> Flow[bytes | None]:
        """GET a (small) file through the transport's download call; None for 404, bounded by max_length."""
        buffer = bytearray()

        def sink(position: int, chunk: bytes) -> None:
            if position != len(buffer):
                if position != 0:
                    raise TransportError(f"unexpected range start {position}", retryable=True)
                buffer.clear()
            if len(buffer) + len(chunk) > request.max_length:
                raise _TooLarge(f"{request.url} is larger than {request.max_length} bytes")
            buffer.extend(chunk)

        try:
            yield Download(request.url, "", 0, sink, self.chunk_size, request.max_length, self._limits(None))
        except (_TooLarge, AnswerTooLarge) as exc:
            raise UntrustedUpdate("metadata_too_large", str(exc)) from exc
        except TransportError as exc:
            if exc.status == 404:
                return None
            raise
        return bytes(buffer)

    def _still_directed(self, dep: dict[str, Any]) -> Flow[bool]:
        """Before installing: ask the director again; withdrawn (halt, cancel) -> abandon, untrusted -> fail."""
        assert self.verifier is not None
        target = _target_from_state(dep["verified"])
        now = self._trusted_now()
        try:
            data = yield from self._get_bytes(
                FetchBytes(self.verifier.trust.director_url.rstrip("/") + "/targets.json")
            )
            directed: bool = yield from self._verification(self.verifier.still_directed(data, target, now=now))
        except UntrustedUpdate as exc:
            self._finish("failed", finished=True, failure_class="untrusted", detail=f"untrusted: {exc}"[:500])
            return False
        if not directed:
            self._abandon("the director withdrew it")
            return False
        self._trust_time(now)
        return True

    def _refresh_url(self, offer: dict[str, Any]) -> bool:
        """Take a fresh artifact URL (new download token) the server repeats for the deployment being fetched."""
        dep = self.deployment
        artifact = offer.get("artifact") or {}
        if dep is None or offer.get("deployment_id") != dep["id"] or artifact.get("sha256") != dep["sha256"]:
            return False
        if artifact.get("url") and artifact["url"] != dep["url"]:
            dep["url"] = artifact["url"]
            self._save()
        return True

    def _limits(self, dep: dict[str, Any] | None) -> TransferLimits:
        """This transfer's limits: the per-transfer cap, shortened to the offer's deadline when that comes first."""
        limits = self.transfer_limits
        deadline = dep.get("deadline_at") if dep else None
        if deadline is None:
            return limits
        seconds = max(0.0, min(limits.seconds, deadline - self.clock()))
        return TransferLimits(seconds, limits.floor_bytes_per_second, limits.window_seconds)

    def _deadline_passed(self, dep: dict[str, Any]) -> bool:
        deadline = dep.get("deadline_at")
        return deadline is not None and self.clock() > deadline

    def _give_up_if_late(self, dep: dict[str, Any], failure_class: str) -> bool:
        """Past the server's deadline nothing new is started: report the failure (the plan decides on retries)."""
        if not self._deadline_passed(dep):
            return False
        when = _utc_iso(dep["deadline_at"])
        self._finish("failed", finished=False, failure_class=failure_class, detail=f"{failure_class}: deadline {when}")
        return True

    def _advance(self) -> Flow[None]:
        dep = self.deployment
        if dep is None:
            return
        if dep["phase"] == "downloading":
            if self._give_up_if_late(dep, "download"):
                yield from self._flush()
                return
            yield from self._download(dep)
            yield from self._flush()
        if self.deployment is dep and dep["phase"] == "downloaded":
            if self._give_up_if_late(dep, "install"):
                yield from self._flush()
                return
            if dep.get("verified") and self.verifier is not None and not (yield from self._still_directed(dep)):
                yield from self._flush()
                return
            dep.setdefault("kpis", {})["install_started"] = self.clock()
            self._phase("installing")
            yield from self._flush()  # the answer may say the server ended it: then nothing is installed
        if self.deployment is dep and dep["phase"] == "installing":
            self._install(dep)
            yield from self._flush()
        if self.deployment is dep and dep["phase"] == "rebooting" and self.booted_slot != self.state["trial_slot"]:
            self.booted_slot = None  # reboot: the next cycle starts with the bootloader

    def _download(self, dep: dict[str, Any]) -> Flow[None]:
        path = self.store.partial_path
        length = dep["length"]
        offset = min(self.state["download_offset"], path.stat().st_size if path.exists() else 0)
        with open(path, "ab") as partial:
            partial.truncate(offset)  # anything past the persisted offset was never acknowledged
        self.state["download_offset"] = offset
        if offset < length:
            self._download_started = (self.clock(), offset)
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
                    total = yield from self._fetch(dep, sink)
                    if total != length:
                        raise VerifyError(f"server has {total} bytes, the offer said {length}")
                except (VerifyError, AnswerTooLarge) as exc:
                    failure = "untrusted" if dep.get("verified") else "verify"
                    self._finish("failed", finished=False, failure_class=failure, detail=f"{failure}: artifact: {exc}")
                    return
                except TransferAborted as exc:
                    # The bytes so far are kept (download_offset is persisted per chunk): the next cycle resumes
                    # with Range. Past the offer's deadline it is over: a `download` failure (the plan's retries).
                    received = self.state["download_offset"]
                    logger.warning(
                        "deployment %s: transfer aborted at %s of %s bytes: %s", dep["id"], received, length, exc
                    )
                    if exc.code == TRANSFER_DEADLINE and self._deadline_passed(dep):
                        detail = f"download: {exc.code}: deadline {_utc_iso(dep['deadline_at'])}, {received} of {length} bytes"
                        self._finish("failed", finished=False, failure_class="download", detail=detail)
                        return
                    raise
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
        # Verify the whole image before anything else happens to it: against the signed target's hashes and length
        # (python-tuf's check) when the repositories are in use, else against the offer's sha256 and length.
        if dep.get("verified"):
            mismatch = file_matches(path, _target_from_state(dep["verified"]))
            if mismatch is not None:
                detail = f"untrusted: artifact: {mismatch}"[:500]
                self._finish("failed", finished=False, failure_class="untrusted", detail=detail)
                return
        else:
            size = path.stat().st_size
            digest = _sha256_file(path)
            if size != length or digest != dep["sha256"]:
                self._finish("failed", finished=False, failure_class="verify", detail=f"verify: sha256 {digest}")
                return
        self._record_throughput(dep)
        self._stage(dep)

    def _fetch(self, dep: dict[str, Any], sink: Callable[[int, bytes], None]) -> Flow[int]:
        """Download from the persisted offset; when the URL's token has expired, keep the bytes, check in for a
        fresh URL and resume from where the download stopped (once per token: a second refusal is final)."""
        try:
            total: int = yield self._image_call(dep, sink)
            return total
        except TransportError as exc:
            if exc.code != "download_token_expired":
                raise
            logger.info(
                "deployment %s: download token expired at %s bytes, checking in",
                dep["id"],
                self.state["download_offset"],
            )
        answer = yield from self._checkin()
        offer = answer.get("offer")
        if not (offer and self._refresh_url(offer)):
            raise TransportError("download token expired and no fresh URL offered", retryable=True)
        self.hook("download:new_url")
        total = yield self._image_call(dep, sink)
        return total

    def _image_call(self, dep: dict[str, Any], sink: Callable[[int, bytes], None]) -> Download:
        """The ranged image GET from the persisted offset, bounded by the offered length and this transfer's limits."""
        offset = self.state["download_offset"]
        return Download(dep["url"], dep["sha256"], offset, sink, self.chunk_size, dep["length"], self._limits(dep))

    def _record_throughput(self, dep: dict[str, Any]) -> None:
        if self._download_started is None:
            return
        started, offset = self._download_started
        elapsed = max(self.clock() - started, 1e-3)
        dep.setdefault("kpis", {})["link_kbps"] = min(int((dep["length"] - offset) * 8 / 1000 / elapsed), 10_000_000)

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
        self.state.setdefault("slot_images", {}).pop(target, None)
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
        self.state.setdefault("slot_images", {})[target] = dep["sha256"]
        self.store.staged_path.unlink(missing_ok=True)
        kpis = dep.setdefault("kpis", {})
        started = kpis.pop("install_started", None)
        if started is not None:
            kpis["install_duration_s"] = max(0, int(round(self.clock() - started)))
        self._phase("rebooting", trial_slot=target, boot_count=0)
