"""The director's side of an offer: which signed per-device targets a deployment's offer carries, and when a
deployment's director metadata is no longer served (withdrawn).

Fleet-scale by construction: nothing per device runs in Temporal. The metadata is signed once when the deployment
is first offered (`deployment_director_targets`) and kept on the deployment row, which the offer statement reads
anyway, so a re-sent offer costs no query and no signature until less than half of its lifetime is left.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from devices.firmware.director.services import (
    DirectorAssignment,
    director_initialised,
    director_targets_sign,
)
from devices.firmware.repository.models import ImageTarget
from devices.models import Device
from ota_project.errors import Conflict
from rollouts.choices import DeploymentStatus
from rollouts.deployment_services import deployment_withdrawal
from rollouts.models import Deployment

logger = logging.getLogger(__name__)

# Deployments whose director metadata is served: from the offer until the device has installed (after that the
# device needs no metadata for this deployment any more).
DIRECTOR_SERVED = (
    DeploymentStatus.OFFERED,
    DeploymentStatus.DOWNLOADING,
    DeploymentStatus.DOWNLOADED,
    DeploymentStatus.INSTALLING,
)


def director_targets_fresh_until(deployment: Deployment) -> datetime | None:
    """Until when the stored metadata is reused (while it has more than half of its lifetime left); None: none."""
    expires = deployment.director_expires
    if deployment.director_targets is None or expires is None:
        return None
    return expires - timedelta(seconds=settings.DIRECTOR_TARGETS_EXPIRY_SECONDS / 2)


def _fresh(deployment: Deployment, now: datetime) -> bool:
    until = director_targets_fresh_until(deployment)
    return until is not None and now < until


def deployment_director_targets(*, deployment: Deployment, now: datetime | None = None) -> bytes | None:
    """The signed director targets an offer of `deployment` carries: the stored ones while fresh, else newly signed
    and stored on the row. None when there is no director or the release is not in the image repository (then the
    device, if it trusts the repositories, refuses the offer: an unsigned image is not installable)."""
    now = now or timezone.now()
    if _fresh(deployment, now):
        return bytes(deployment.director_targets)  # type: ignore[arg-type]  # _fresh checked it is set
    if not director_initialised():
        return None
    target = ImageTarget.objects.filter(release_id=deployment.release_id).first()
    if target is None:
        return None
    serial, hardware_id = (
        Device.objects.filter(pk=deployment.device_id).values_list("serial", "hardware_model__name").get()
    )
    try:
        signed = director_targets_sign(
            assignment=DirectorAssignment(
                deployment_id=deployment.pk, device_serial=serial, hardware_id=hardware_id, target=target
            ),
            now=now,
        )
    except Conflict:
        # E.g. the director key rotated before a new director root names it: the offer goes out without director
        # metadata, which a verifying device refuses (and reports); the operator sees the cause in the log.
        logger.exception("director metadata for deployment %s could not be signed", deployment.pk)
        return None
    # Only this row, only these two columns, and only if no concurrent request stored newer metadata since this one
    # read the row (compare-and-set on the expiry): a device must never be handed a version below one it was given.
    stored = Deployment.objects.filter(pk=deployment.pk, director_expires=deployment.director_expires).update(
        director_targets=signed.content, director_expires=signed.expires
    )
    if not stored:
        current = Deployment.objects.filter(pk=deployment.pk).values_list("director_targets", "director_expires").get()
        if current[0] is not None:
            deployment.director_targets, deployment.director_expires = current
            return bytes(current[0])
    deployment.director_targets, deployment.director_expires = signed.content, signed.expires
    return signed.content


def device_director_targets(*, device: Device, now: datetime | None = None) -> bytes | None:
    """The director metadata the device may fetch now: that of its deployment between offer and install, while the
    rollout still wants it (not halted, aborted, cancelled, breaker, quarantine). None means withdrawn."""
    deployment = (
        Deployment.objects.select_related("release", "rollout__change")
        .filter(device=device, status__in=DIRECTOR_SERVED)
        .order_by("-pk")
        .first()
    )
    if deployment is None or deployment_withdrawal(deployment, device) is not None:
        return None
    return deployment_director_targets(deployment=deployment, now=now)
