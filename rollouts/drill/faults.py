"""Device faults for a drill: who loses power during the install and where, who stays offline, whose boot health
check rejects a bad image. Drawn once per drill from a seed, as exact shares of the fleet.

Nothing here tells the server anything: a power loss is the agent object being abandoned and a new one built on
the same state directory; an offline device never opens a connection; a bad image fails the device's own
health check after it booted it, and the agent falls back by itself.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from devices.agent import PowerLoss

# Points of the install where the power can go (agent hook events): before and while the slot is written,
# after it was written, and after the first boot of the new slot before its health is confirmed.
POWER_LOSS_EVENTS = ("installing:sent", "install:partial", "rebooting", "booted")


@dataclass(frozen=True)
class DeviceFaults:
    """Shares of the fleet hit by each device fault (0 = nobody)."""

    power_loss_share: float = 0.0
    power_loss_events: tuple[str, ...] = POWER_LOSS_EVENTS
    power_off_seconds: tuple[float, float] = (0.5, 3.0)
    offline_share: float = 0.0
    bad_boot_share: float = 0.0  # of the devices of `bad_boot_model`, whose health check rejects the bad image
    bad_boot_model: str = ""


@dataclass
class DeviceFate:
    """What happens to one device during the drill."""

    serial: str
    hardware_model: str
    offline: bool = False
    power_loss_event: str | None = None
    rejects_bad_image: bool = False
    kpi_seed: int = 0
    power_losses: list[str] = field(default_factory=list)


def _pick(rng: random.Random, population: Sequence[str], share: float) -> set[str]:
    count = min(len(population), round(len(population) * share))
    return set(rng.sample(list(population), count)) if count else set()


def plan_fates(
    devices: Sequence[tuple[str, str]], faults: DeviceFaults, *, seed: int, strata: set[str] | None = None
) -> dict[str, DeviceFate]:
    """One fate per (serial, hardware model), exact shares drawn from `seed`; offline devices get no other fault
    and are never pilots (`strata`).

    The bad-image share is drawn separately inside `strata` (the pilot devices) and outside it, at least one
    inside when the share is above 0: a pilot that by chance holds no affected unit would rehearse nothing."""
    rng = random.Random(f"fates:{seed}")
    serials = [serial for serial, _ in devices]
    # Pilot units are the reachable ones by choice: nobody stays offline among them.
    offline = _pick(rng, [s for s in serials if not (strata and s in strata)], faults.offline_share)
    online = [s for s in serials if s not in offline]
    power = _pick(rng, online, faults.power_loss_share)
    of_model = [serial for serial, model in devices if model == faults.bad_boot_model and serial not in offline]
    inside = [serial for serial in of_model if strata and serial in strata]
    outside = [serial for serial in of_model if not (strata and serial in strata)]
    rejecting = _pick(rng, outside, faults.bad_boot_share)
    if inside and faults.bad_boot_share > 0:
        rejecting |= set(rng.sample(inside, max(1, round(len(inside) * faults.bad_boot_share))))
    fates = {}
    for serial, model in devices:
        fates[serial] = DeviceFate(
            serial=serial,
            hardware_model=model,
            offline=serial in offline,
            power_loss_event=rng.choice(faults.power_loss_events) if serial in power else None,
            rejects_bad_image=serial in rejecting,
            kpi_seed=rng.randrange(2**31),
        )
    return fates


def health_check_for(fate: DeviceFate, bad_sha256: str | None) -> Callable[[bytes, str], bool]:
    """The device's boot health check: it fails on the bad image when this unit is one of the affected share."""

    def check(image: bytes, slot: str) -> bool:
        if bad_sha256 and fate.rejects_bad_image and hashlib.sha256(image).hexdigest() == bad_sha256:
            return False
        return True

    return check


def power_cut_for(fate: DeviceFate) -> Callable[[str], None]:
    """An agent hook that cuts the power once, at the fate's event (and records that it did)."""

    def hook(event: str) -> None:
        if fate.power_loss_event and event == fate.power_loss_event and not fate.power_losses:
            fate.power_losses.append(event)
            raise PowerLoss(event)

    return hook


def probe_for(fate: DeviceFate, gps_factor: Callable[[str], float] | None = None) -> Callable[[str], dict[str, Any]]:
    """Boot KPIs of this unit after a boot: plausible, seeded per device and boot. `gps_factor(slot)` scales the
    GPS time to fix of the image in that slot (a silent regression: the image boots fine, the receiver is slow)."""
    boots = [0]

    def probe(slot: str) -> dict[str, Any]:
        boots[0] += 1
        rng = random.Random(f"{fate.kpi_seed}:{boots[0]}")
        factor = gps_factor(slot) if gps_factor is not None else 1.0
        return {
            "boot_time_s": rng.randint(8, 25),
            "gps_fix_s": round(rng.randint(4, 90) * factor),
            "sensor_calibrated": rng.random() > 0.02,
        }

    return probe


def gps_factor_for(
    fate: DeviceFate, slot_image: Callable[[str], bytes], *, regressed_sha256: str | None, model: str, factor: float
) -> Callable[[str], float]:
    """The silent regression: on units of `model`, the image with `regressed_sha256` takes `factor` times longer
    to get a GPS fix; every other unit and image is unaffected."""

    def gps_factor(slot: str) -> float:
        if not regressed_sha256 or fate.hardware_model != model:
            return 1.0
        return factor if hashlib.sha256(slot_image(slot)).hexdigest() == regressed_sha256 else 1.0

    return gps_factor
