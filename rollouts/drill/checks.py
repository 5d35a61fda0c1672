"""The chaos figures of a drill report and its acceptance checks, as pure functions over plain data.

The drill (rollouts.drill.run) reads the rows from the database and the offers from the fleet; everything that turns
them into a figure lives here, so it is unit-tested on hand-made data (tests/drill/test_drill_checks.py):

- lost deployments: a device in scope left without a deployment by a completed rollout, a device that took the
  new image left without a rollback by a rolled-back one, or a deployment still open after its rollout ended;
- duplicated deployments: more than one deployment of one kind for one device in one rollout;
- doubly-held devices: a device holding more than one open deployment (across all rollouts) at a sampled moment;
- threshold crossing: when the failure rate of a wave first reached its failure threshold on enough finished
  devices (the policy's own rule, replayed over the finish times of the reports);
- last offer: when a device last received an offer of a release, from the fleet's side.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from rollouts.choices import (
    DEPLOYMENT_FAILURES,
    DEPLOYMENT_TERMINAL,
    ROLLOUT_TERMINAL,
    DeploymentKind,
    RolloutStatus,
)
from rollouts.rollout_services import TOOK_NEW_IMAGE

# The policy compares rates with this tolerance (workflows.policy): 1 of 10 at a 10% threshold is a failure.
_EPSILON = 1e-9


@dataclass(frozen=True)
class DeploymentFact:
    """One deployment row as the checks need it."""

    rollout_id: int
    device_id: int
    kind: str
    status: str


@dataclass(frozen=True)
class FinishedReport:
    """One finished deployment of a wave: when the server recorded its outcome, and whether it was a failure."""

    finished_at: datetime
    failed: bool


def lost_deployments(
    *, rollout_status: str, in_scope: Collection[int], deployments: Iterable[DeploymentFact]
) -> int | None:
    """Lost deployments of one rollout; None while it has not ended (nothing can be called lost yet)."""
    if rollout_status not in ROLLOUT_TERMINAL:
        return None
    deployments = list(deployments)
    lost = sum(1 for d in deployments if d.status not in DEPLOYMENT_TERMINAL)
    updated = {d.device_id for d in deployments if d.kind == DeploymentKind.UPDATE}
    if rollout_status == RolloutStatus.COMPLETED:
        lost += sum(1 for device in set(in_scope) if device not in updated)
    if rollout_status == RolloutStatus.ROLLED_BACK:
        took = {d.device_id for d in deployments if d.kind == DeploymentKind.UPDATE and d.status in TOOK_NEW_IMAGE}
        restored = {d.device_id for d in deployments if d.kind == DeploymentKind.ROLLBACK}
        lost += len(took - restored)
    return lost


def duplicated_deployments(deployments: Iterable[DeploymentFact]) -> int:
    """Deployments beyond the first for one (rollout, device, kind)."""
    counts = Counter((d.rollout_id, d.device_id, d.kind) for d in deployments)
    return sum(n - 1 for n in counts.values() if n > 1)


def doubly_held(open_deployments: Iterable[tuple[int, int]]) -> set[int]:
    """Devices holding more than one open deployment in one sample of (device_id, deployment_id) rows."""
    counts = Counter(device for device, _ in set(open_deployments))
    return {device for device, n in counts.items() if n > 1}


def threshold_crossed_at(
    reports: Iterable[FinishedReport], *, total: int, min_sample: int, failure_threshold: float
) -> datetime | None:
    """The finish time of the report at which failures/finished first reached `failure_threshold` with at least
    min(min_sample, total) devices finished (the wave's FAIL rule); None if it never did."""
    sample = max(1, min(min_sample, total))
    finished = failures = 0
    for report in sorted(reports, key=lambda r: r.finished_at):
        finished += 1
        failures += report.failed
        if finished >= sample and failures / finished >= failure_threshold - _EPSILON:
            return report.finished_at
    return None


def is_failure(status: str) -> bool:
    return status in DEPLOYMENT_FAILURES


def last_offer_at(offers: Iterable[Any], sha256: str) -> datetime | None:
    """When any device last received an offer of the image `sha256` (offers: objects with `.at` and `.sha256`)."""
    times = [offer.at for offer in offers if offer.sha256 == sha256]
    return max(times) if times else None


def seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    return round((end - start).total_seconds(), 2) if start is not None and end is not None else None


# --- acceptance -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One acceptance check: what it requires, whether it held, and the figure it was judged on."""

    name: str
    ok: bool
    value: Any

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "value": self.value}


def acceptance_checks(report: Mapping[str, Any], *, expected_status: str | None) -> list[Check]:
    """The acceptance targets every drill is held to, plus the ones its scenario adds (issue #9)."""
    checks = [
        Check("the rollout ended", report.get("rollout_ended") is True, report.get("rollout_status")),
        Check("0 lost deployments", report.get("lost_deployments") == 0, report.get("lost_deployments")),
        Check(
            "0 duplicated deployments", report.get("duplicated_deployments") == 0, report.get("duplicated_deployments")
        ),
        Check("0 doubly-held devices", report.get("doubly_held_devices") == 0, report.get("doubly_held_devices")),
        Check("0 bricked devices", report.get("bricked_devices") == 0, report.get("bricked_devices")),
        Check("the audit chain verifies", report.get("audit_chain_ok") is True, report.get("audit_chain_ok")),
        # Full verification on every agent (issue #11): each install followed a verified offer, none was refused.
        Check(
            "every install was verified against both repositories",
            report.get("unverified_installs") == 0,
            report.get("unverified_installs"),
        ),
        Check("0 offers refused as untrusted", report.get("untrusted_refusals") == 0, report.get("untrusted_refusals")),
    ]
    if expected_status is not None:
        status = report.get("rollout_status")
        checks.append(Check(f"the rollout ended {expected_status}", status == expected_status, status))
    if report.get("bad_release_sha256"):
        gap = report.get("seconds_threshold_to_last_offer")
        poll = report.get("poll_seconds")
        within = gap is not None and poll is not None and gap <= poll
        checks.append(Check("last offer of the failing release within one poll interval of the threshold", within, gap))
    if report.get("silent_regression"):
        signals = report.get("pilot_signal_gate") or {}
        checks.append(
            Check(
                "the health gate found the regression in the pilot",
                signals.get("verdict") == "regression",
                signals.get("reason"),
            )
        )
        checks.append(
            Check("the rollout halted in the pilot wave", report.get("halted_wave") == 0, report.get("halted_wave"))
        )
        outside = report.get("bad_release_installed_outside_pilot")
        checks.append(Check("0 devices outside the pilot installed the release", outside == 0, outside))
    racing = report.get("racing")
    if racing is not None:
        starts = racing.get("starts_succeeded")
        checks.append(Check("exactly one of the racing starts succeeded", starts == 1, starts))
    return checks


def failed_checks(checks: Iterable[Check]) -> list[Check]:
    return [check for check in checks if not check.ok]
