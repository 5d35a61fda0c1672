"""Automatic quarantine: a device whose installs keep failing leaves every rollout until a person releases it.

Counted where the failure arrives (`deployment_report`, under the deployment's row lock and then the device's):
each failed or rolled-back install of an update (download failures excepted: those are the link's, and the plan
retries them) adds one to the device's `install_failures`; a confirmed success or a release from quarantine starts
it again. When the count reaches the plan's `quarantine_after_failures`, the device is quarantined in the same
transaction (a decision record by `system:device_api`), which the offer path, the wave assignment and the database
itself (a trigger on deployments) all refuse to offer to, and an alert is raised.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import quote

from devices.choices import DeviceStatus
from devices.models import Device
from devices.services import device_install_failure_count, device_quarantine, device_quarantine_alert_key
from ota_project.alerts.choices import AlertKind, AlertSeverity
from ota_project.alerts.services import raise_alert
from rollouts.models import Deployment

QUARANTINE_ACTOR = "device_api"
# Failure classes that do not count: the plan retries them and they say more about the link than the unit.
NOT_COUNTED_FAILURES = frozenset({"download"})


def install_failure_counts(failure_class: str) -> bool:
    """Whether a failure of this class counts towards quarantine."""
    return failure_class not in NOT_COUNTED_FAILURES


def device_failure_record(*, device: Device, deployment: Deployment, failure_class: str, now: datetime) -> bool:
    """Count a failed install of `device` in `deployment`; quarantine it (and alert) at the plan's threshold.

    Returns True when this failure quarantined the device. Runs in the report's transaction.
    """
    if not install_failure_counts(failure_class):
        return False
    failures = device_install_failure_count(device_id=device.pk)
    threshold = deployment.rollout.approved_plan.quarantine_threshold
    if not threshold or failures < threshold:
        return False
    status = Device.objects.filter(pk=device.pk).values_list("status", flat=True).get()
    if status != DeviceStatus.ACTIVE:
        return False
    release = deployment.release
    reason = (
        f"Quarantined automatically after {failures} failed installs in a row (plan threshold {threshold}); the last: "
        f"release {release.version} in rollout {deployment.rollout_id}, failure class {failure_class or 'unknown'}."
    )
    device_quarantine(actor=None, device=device, reason=reason, system_actor=QUARANTINE_ACTOR)
    raise_alert(
        kind=AlertKind.DEVICE_QUARANTINED,
        dedup_key=device_quarantine_alert_key(device.serial),
        title=f"Device {device.serial} quarantined after {failures} failed installs",
        summary=(
            f"{reason} It gets no offer from any rollout until an operator releases it on its page, "
            "after looking at its history."
        ),
        link=f"/fleet/devices/{quote(device.serial)}/",
        evidence={
            "device": device.serial,
            "failed_installs": failures,
            "threshold": threshold,
            "release": release.version,
            "rollout": deployment.rollout_id,
            "deployment": deployment.pk,
            "failure_class": failure_class,
            "detail": deployment.detail,
            "at": now.isoformat(),
        },
        severity=AlertSeverity.WARNING,
    )
    return True
