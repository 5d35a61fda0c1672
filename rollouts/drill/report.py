"""The drill report from plain data: what the devices' own disks say, what the database says, what the proxy did.

Nothing here counts what the drill *intended*: an update is counted because a device's active slot holds the
verified image of the new release, a brick because an active slot cannot boot a verified image.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rollouts.drill.fleet import DeviceOutcome

# The keys every report has, in this order (issue #4); scenario-specific ones follow.
REPORT_KEYS = (
    "scenario",
    "devices",
    "seed",
    "waves_planned",
    "waves_completed",
    "rollout_status",
    "halted",
    "halted_wave",
    "updated",
    "failed",
    "timed_out",
    "rolled_back",
    "offline",
    "exposed_to_bad_release",
    "bad_release_installed_outside_pilot",
    "exposed_ending_on_bad_release",
    "seconds_to_halt",
    "seconds_to_restore",
    "bytes_needed",
    "bytes_downloaded",
    "download_overhead_ratio",
    "resumed_downloads",
    "lost_deployments",
    "duplicated_deployments",
    "bricked_devices",
    "power_losses",
    "agent_errors",
    "audit_chain_ok",
    "wall_clock_seconds",
)


def fleet_facts(
    outcomes: Iterable[DeviceOutcome],
    *,
    new_version: str,
    bad_version: str | None,
    pilot_serials: set[str],
    bytes_needed: int,
) -> dict[str, Any]:
    """What the devices themselves say: active images, bricks, traffic, which of them wrote the bad release."""
    outcomes = list(outcomes)
    wrote_bad = {o.serial for o in outcomes if bad_version and bad_version in o.installed_versions}
    downloaded = sum(o.bytes_received for o in outcomes)
    return {
        "devices_on_new_release": sum(
            1 for o in outcomes if o.active_version == new_version and o.active_image_verified
        ),
        "bricked_devices": sum(1 for o in outcomes if o.bricked),
        "bricked_serials": sorted(o.serial for o in outcomes if o.bricked),
        "offline_serials": sorted(o.serial for o in outcomes if o.offline),
        "devices_wrote_bad_release": len(wrote_bad),
        "bad_release_written_outside_pilot": len(wrote_bad - pilot_serials),
        "exposed_ending_on_bad_release": sum(
            1 for o in outcomes if bad_version and o.serial in wrote_bad and o.active_version == bad_version
        ),
        "bytes_needed": bytes_needed,
        "bytes_downloaded": downloaded,
        "download_overhead_ratio": round(downloaded / bytes_needed, 4) if bytes_needed else None,
        "resumed_downloads": sum(o.resumed_downloads for o in outcomes),
        "downloads": sum(o.downloads for o in outcomes),
        "power_losses": sum(o.power_losses for o in outcomes),
        "agent_errors": sum(o.agent_errors for o in outcomes),
        "still_busy": sum(1 for o in outcomes if o.deployment_in_progress or o.trial_pending),
    }


def assemble(values: Mapping[str, Any]) -> dict[str, Any]:
    """One JSON-ready object: the issue's keys first, in order, then everything else sorted by name."""
    report = {key: values.get(key) for key in REPORT_KEYS}
    report.update({key: values[key] for key in sorted(values) if key not in report})
    return report
