"""Play device reports through the device services (no HTTP): the demo's rollout history and the tests use it.

Real devices (the reference agent, the fleet drill) go through the device API instead.
"""

from __future__ import annotations

from typing import TypedDict

from rollouts.choices import DeploymentStatus
from rollouts.deployment_services import Report, deployment_report
from rollouts.models import Deployment

_S = DeploymentStatus
HAPPY = (_S.DOWNLOADING, _S.DOWNLOADED, _S.INSTALLING, _S.REBOOTING, _S.CONFIRMING, _S.SUCCEEDED)
FAIL_BOOT = (_S.DOWNLOADING, _S.DOWNLOADED, _S.INSTALLING, _S.REBOOTING, _S.ROLLED_BACK)


class _Outcome(TypedDict, total=False):
    booted_version: str
    health_passed: bool
    failure_class: str
    detail: str


def play(deployment: Deployment, statuses: tuple[str, ...], *, failure_detail: str = "") -> None:
    """Report `statuses` for one deployment as its device would (sequence numbers continue the device's own)."""
    device = deployment.device
    for seq, status in enumerate(statuses, start=deployment.last_seq + 1):
        extra: _Outcome = {}
        if status == "succeeded":
            extra = {"booted_version": deployment.release.version, "health_passed": True}
        elif status in ("failed", "rolled_back"):
            extra = {"failure_class": "boot", "detail": failure_detail}
        deployment_report(device=device, deployment_id=deployment.pk, report=Report(seq, status, **extra))
