"""Device API reads and writes that belong to no single existing service: offers in progress, artifact access,
telemetry intake."""

from __future__ import annotations

from typing import Any

from django.db import transaction

from approvals.audit.security import SecurityEventKind, security_event
from devices.models import Device
from devices.telemetry import BatchAcceptance, telemetry_batch_accept
from ota_project.errors import InvalidInput
from rollouts.choices import DeploymentStatus
from rollouts.deployment_services import deployment_withdrawal
from rollouts.models import Deployment

# A device may fetch (and resume) the image of a deployment in these statuses only.
DOWNLOADABLE = (DeploymentStatus.OFFERED, DeploymentStatus.DOWNLOADING, DeploymentStatus.DOWNLOADED)
IN_FLIGHT = (
    DeploymentStatus.OFFERED,
    DeploymentStatus.DOWNLOADING,
    DeploymentStatus.DOWNLOADED,
    DeploymentStatus.INSTALLING,
    DeploymentStatus.REBOOTING,
    DeploymentStatus.CONFIRMING,
)


def device_deployment_get(*, device: Device, deployment_id: int) -> Deployment | None:
    """The device's own deployment, or None for both "missing" and "another device's"."""
    return Deployment.objects.filter(pk=deployment_id, device=device).first()


def deployment_is_another_devices(*, device: Device, deployment_id: int) -> bool:
    """True when the deployment exists but belongs to another device (a device naming it is suspicious)."""
    return Deployment.objects.filter(pk=deployment_id).exclude(device=device).exists()


def device_has_deployment_in_flight(*, device: Device) -> bool:
    """True while one of the device's deployments is between offer and confirmation (it should poll faster)."""
    return Deployment.objects.filter(device=device, status__in=IN_FLIGHT).exists()


def device_artifact_offered(*, device: Device, sha256: str) -> Deployment | None:
    """The device's deployment that currently offers the image with this sha256, if any."""
    deployment = (
        Deployment.objects.select_related("release__artifact", "rollout__change")
        .filter(device=device, status__in=DOWNLOADABLE, release__artifact__sha256=sha256)
        .order_by("-updated_at")
        .first()
    )
    # The offer's rules hold for every range: a quarantined device, a closed change or a tripped breaker stop the
    # bytes too, not only new offers.
    if deployment is None or deployment_withdrawal(deployment, device) is not None:
        return None
    return deployment


@transaction.atomic
def telemetry_accept(*, device: Device, samples: list[dict[str, Any]], batch_id: str | None) -> BatchAcceptance:
    """Accept a device's KPI batch for asynchronous processing; samples may name only the device's own deployments."""
    named = {s["deployment_id"] for s in samples if s.get("deployment_id")}
    own = set(Deployment.objects.filter(device=device, pk__in=named).values_list("pk", flat=True))
    unknown = sorted(named - own)
    if unknown:
        others = list(Deployment.objects.filter(pk__in=unknown).order_by("pk").values_list("pk", flat=True)[:20])
        if others:
            security_event(
                kind=SecurityEventKind.DEVICE_CROSS_DEVICE,
                source="device_api.telemetry",
                message="Telemetry named another device's deployment.",
                device_serial=device.serial,
                subject="deployments:" + ",".join(str(pk) for pk in others),
            )
        raise InvalidInput(
            "Telemetry names deployments this device does not have.",
            fields={"samples": [f"Unknown deployment {pk}." for pk in unknown[:20]]},
        )
    return telemetry_batch_accept(device=device, samples=samples, batch_id=batch_id)
