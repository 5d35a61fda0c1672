"""A simulated fleet: N reference agents in ONE asyncio event loop, each with its own state directory, talking
HTTPS with mutual TLS to the device API (through the fault proxy in a drill, a TCP proxy: TLS goes end to end to
nginx), each device presenting its own certificate and pinning the server's key.

A device's life: wait for its start (spread over the ramp so the fleet does not check in at one instant), power
on (a new `Agent` on its state directory), poll until told to stop. A power loss is the agent object being
dropped mid-step: the device stays dark for a moment, then powers on again from what its state directory holds.
Offline devices never start. The loop runs in a thread of its own so the caller (the drill) can keep using the
ORM synchronously.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devices.agent import Agent, AsyncHttpTransport, PowerLoss
from devices.agent.state import STATE_FILE
from devices.agent.tls import TlsIdentity
from devices.agent.verify import Trust
from rollouts.drill.faults import DeviceFate, gps_factor_for, health_check_for, power_cut_for, probe_for
from rollouts.drill.proxy import FaultProxy

logger = logging.getLogger("rollouts.drill")

RESTART_AFTER_ERROR_SECONDS = 2.0


@dataclass(frozen=True)
class DeviceSpec:
    """A provisioned unit: its serial, its identity directory (key, certificate, CA bundle and server pins, as
    `devices provision` writes it) and what it runs from the factory."""

    serial: str
    identity_dir: Path
    hardware_model: str
    version: str
    release_counter: int
    trust: Trust | None = None  # the two trust roots it was provisioned with (None: no image repository in use)


@dataclass(frozen=True)
class FleetSettings:
    """How the simulated devices behave (time-compressed backoff, timeouts, chunk size)."""

    server_url: str
    state_root: Path
    factory_image: bytes
    seed: int = 0
    timeout: float = 20.0
    backoff_base: float = 0.5
    backoff_cap: float = 20.0
    chunk_size: int = 32 * 1024
    ramp_seconds: float = 5.0
    power_off_seconds: tuple[float, float] = (0.5, 3.0)
    bad_sha256: str | None = None
    # A silent regression: units of `regressed_model` take `gps_factor` times longer to get a GPS fix on the image
    # with `regressed_sha256`; devices report boot KPIs after every power-on (the baseline the gates compare with).
    regressed_sha256: str | None = None
    regressed_model: str = ""
    gps_factor: float = 1.0
    boot_samples: bool = False


@dataclass(frozen=True)
class OfferSeen:
    """A check-in answer that offered this device a deployment, as the device received it (fleet-side clock)."""

    at: datetime
    serial: str
    deployment_id: int
    sha256: str
    release_version: str


class OfferRecordingTransport(AsyncHttpTransport):
    """The agent's asyncio transport, noting every offer a check-in answer carries (accepted or not): when the
    server last offered a release is known on the devices' side, whatever the server recorded."""

    def __init__(self, server: str, serial: str, tls: TlsIdentity, *, offers: list[OfferSeen], timeout: float = 30.0):
        super().__init__(server, timeout=timeout, tls=tls)
        self.serial = serial
        self.offers = offers
        self.metadata_bytes = 0  # TUF metadata fetched for verification (kept out of the image traffic figures)

    async def download(self, url: str, **kwargs: Any) -> int:
        if "/artifacts/" in url:
            return await super().download(url, **kwargs)
        received, downloads = self.bytes_received, self.downloads
        try:
            return await super().download(url, **kwargs)
        finally:
            self.metadata_bytes += self.bytes_received - received
            self.bytes_received, self.downloads = received, downloads

    async def post_json(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        answer = await super().post_json(path, body)
        offer = answer.get("offer") if path.rstrip("/").endswith("/checkin") else None
        if offer:
            artifact = offer.get("artifact") or {}
            self.offers.append(
                OfferSeen(
                    datetime.now(UTC),
                    self.serial,
                    int(offer["deployment_id"]),
                    str(artifact.get("sha256", "")),
                    str(offer.get("release_version", "")),
                )
            )
        return answer


@dataclass
class SimulatedDevice:
    """One unit of the fleet: its fate, its transport (counters survive power losses) and its current agent."""

    spec: DeviceSpec
    fate: DeviceFate
    state_dir: Path
    transport: AsyncHttpTransport
    agent: Agent | None = None
    power_ons: int = 0
    agent_errors: list[str] = field(default_factory=list)
    installed_versions: list[str] = field(default_factory=list)  # every release this unit wrote to a slot
    bytes_needed: int = 0  # lengths of the images this unit downloaded completely (once per completed download)
    verified: int = 0  # offers this unit verified fully against both repositories before fetching the image
    unverified_installs: int = 0  # images it wrote to a slot without a signed target verified for that offer

    def hook(self, event: str) -> None:
        dep = self.agent.deployment if self.agent is not None else None
        if event == "rebooting" and dep:
            self.installed_versions.append(dep["release_version"])
            if not dep.get("verified"):
                self.unverified_installs += 1
        elif event == "downloaded" and dep:
            self.bytes_needed += int(dep["length"])
        elif event == "verified":
            self.verified += 1
        power_cut_for(self.fate)(event)


class Fleet:
    """The simulated fleet; `start()` runs it in a background thread, `stop()` ends it and waits."""

    def __init__(
        self,
        specs: list[DeviceSpec],
        fates: dict[str, DeviceFate],
        settings: FleetSettings,
        *,
        proxy: FaultProxy | None = None,
    ):
        self.settings = settings
        self.proxy = proxy  # started on the fleet's loop before the first device powers on
        self.devices: list[SimulatedDevice] = []
        self.offers: list[OfferSeen] = []  # appended on the fleet's loop; read once the fleet stopped
        for spec in specs:
            tls = TlsIdentity.from_directory(spec.identity_dir)
            transport = OfferRecordingTransport(
                settings.server_url, spec.serial, tls, offers=self.offers, timeout=settings.timeout
            )
            self.devices.append(SimulatedDevice(spec, fates[spec.serial], settings.state_root / spec.serial, transport))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self.error: BaseException | None = None

    # --- running ---------------------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Every online device lives until `stop` is set (behind the proxy, if there is one)."""
        rng = random.Random(f"ramp:{self.settings.seed}")
        if self.proxy is not None:
            await self.proxy.start()
        try:
            lives = [
                self._live(device, stop, rng.uniform(0, self.settings.ramp_seconds))
                for device in self.devices
                if not device.fate.offline
            ]
            await asyncio.gather(*lives)
        finally:
            if self.proxy is not None:
                await self.proxy.close()

    async def _live(self, device: SimulatedDevice, stop: asyncio.Event, start_after: float) -> None:
        rng = random.Random(f"life:{self.settings.seed}:{device.spec.serial}")
        if await _sleep_or_stop(stop, start_after):
            return
        while not stop.is_set():
            device.power_ons += 1
            device.agent = Agent(
                device.state_dir,
                device.transport,
                health_check=health_check_for(device.fate, self.settings.bad_sha256),
                hook=device.hook,
                probe=probe_for(device.fate, self._gps_factor(device)),
                version=device.spec.version,
                release_counter=device.spec.release_counter,
                factory_image=self.settings.factory_image,
                chunk_size=self.settings.chunk_size,
                rng=random.Random(rng.randrange(2**31)),
                backoff_base=self.settings.backoff_base,
                backoff_cap=self.settings.backoff_cap,
                trust=device.spec.trust,
                boot_samples=self.settings.boot_samples,
            )
            try:
                await device.agent.arun(stop=stop)
                return
            except PowerLoss:
                low, high = self.settings.power_off_seconds
                wait = rng.uniform(low, high)
            except Exception as exc:  # noqa: BLE001 - an agent bug: the watchdog reboots the unit, the report shows it
                logger.exception("agent of %s crashed", device.spec.serial)
                device.agent_errors.append(f"{type(exc).__name__}: {exc}")
                wait = RESTART_AFTER_ERROR_SECONDS
            if await _sleep_or_stop(stop, wait):
                return

    def _gps_factor(self, device: SimulatedDevice) -> Callable[[str], float] | None:
        if not self.settings.regressed_sha256:
            return None

        def slot_image(slot: str) -> bytes:
            agent = device.agent
            return agent.store.slot_path(slot).read_bytes() if agent is not None else b""

        return gps_factor_for(
            device.fate,
            slot_image,
            regressed_sha256=self.settings.regressed_sha256,
            model=self.settings.regressed_model,
            factor=self.settings.gps_factor,
        )

    def start(self) -> Fleet:
        """Run the fleet in a background thread with its own event loop."""

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._stop = asyncio.Event()
            loop.call_soon(self._ready.set)
            try:
                loop.run_until_complete(self.run(self._stop))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through `error`
                self.error = exc
            finally:
                loop.close()

        self._thread = threading.Thread(target=main, name="drill-fleet", daemon=True)
        self._thread.start()
        self._ready.wait()
        return self

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None
        return self._loop

    def stop(self, timeout: float = 60.0) -> None:
        """Tell every device to stop after its current step and wait for the loop to end."""
        if self._loop is not None and self._stop is not None and self._thread and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(timeout)

    # --- what the devices did ----------------------------------------------------------------------------------

    def busy(self) -> int:
        """Devices holding a deployment or unsent reports right now (the fleet has not settled)."""
        count = 0
        for device in self.devices:
            agent = device.agent
            if agent is not None and (agent.deployment or agent.state["outbox"] or agent.state["trial_slot"]):
                count += 1
        return count

    def outcomes(self, images: dict[str, str]) -> list[DeviceOutcome]:
        """Each device's end state from its own state directory; `images` maps version -> sha256 of its image."""
        return [device_outcome(device, images, self.settings.bad_sha256) for device in self.devices]


@dataclass(frozen=True)
class DeviceOutcome:
    """Where one device ended, from its own disk: what its active slot holds and whether it boots."""

    serial: str
    hardware_model: str
    offline: bool
    active_version: str
    active_image_verified: bool  # the active slot holds exactly the image of the version it claims
    active_boots_healthy: bool  # the device's own health check passes on that image
    trial_pending: bool
    deployment_in_progress: bool
    installed_versions: tuple[str, ...]
    bytes_received: int
    downloads: int
    resumed_downloads: int
    power_losses: int
    agent_errors: int

    @property
    def bricked(self) -> bool:
        """The active slot cannot boot a verified image."""
        return not (self.active_image_verified and self.active_boots_healthy)


def device_outcome(device: SimulatedDevice, images: dict[str, str], bad_sha256: str | None) -> DeviceOutcome:
    """Read one device's state directory (after the fleet stopped) and judge its active slot."""
    version, verified, healthy, trial, in_progress = "", False, False, False, False
    path = device.state_dir / STATE_FILE
    if path.exists():
        state = json.loads(path.read_text())
        active = state["active_slot"]
        slot = state["slots"].get(active, {})
        version = slot.get("version", "")
        image_path = device.state_dir / f"slot_{active}.img"
        if slot.get("present") and image_path.exists():
            image = image_path.read_bytes()
            verified = hashlib.sha256(image).hexdigest() == images.get(version)
            healthy = health_check_for(device.fate, bad_sha256)(image, active)
        trial = state["trial_slot"] is not None
        in_progress = state["deployment"] is not None
    elif device.fate.offline:
        # Never powered on during the drill: it still runs its factory image, untouched.
        version, verified, healthy = device.spec.version, True, True
    return DeviceOutcome(
        serial=device.spec.serial,
        hardware_model=device.spec.hardware_model,
        offline=device.fate.offline,
        active_version=version,
        active_image_verified=verified,
        active_boots_healthy=healthy,
        trial_pending=trial,
        deployment_in_progress=in_progress,
        installed_versions=tuple(device.installed_versions),
        bytes_received=device.transport.bytes_received,
        downloads=device.transport.downloads,
        resumed_downloads=device.transport.resumed_downloads,
        power_losses=len(device.fate.power_losses),
        agent_errors=len(device.agent_errors),
    )


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early when `stop` is set; True if it was."""
    if seconds <= 0:
        return stop.is_set()
    try:
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    except TimeoutError:
        return False
    return True
