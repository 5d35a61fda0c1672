"""Device API reads and writes that belong to no single existing service: offers in progress, artifact access,
telemetry intake."""

from __future__ import annotations

import hmac
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.cache import BaseCache, caches

from approvals.audit.security import SecurityEventKind, security_event
from devices.edge.identity import PresentedIdentity
from devices.models import Device
from devices.telemetry import BatchAcceptance, SampleAttribution, telemetry_batch_accept
from ota_project.errors import InvalidInput
from rollouts.choices import DeploymentStatus
from rollouts.deployment_services import deployment_withdrawal
from rollouts.models import Deployment
from rollouts.signal_gates import deployment_attributions

logger = logging.getLogger(__name__)

DEFAULT_DOWNLOAD_RECHECK_SECONDS = 5
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


def device_has_deployment_in_flight(*, device_id: int) -> bool:
    """True while one of the device's deployments is between offer and confirmation (it should poll faster)."""
    return Deployment.objects.filter(device_id=device_id, status__in=IN_FLIGHT).exists()


def device_has_work(*, device_id: int) -> bool:
    """Whether a deployment waits for the device or is under way (what an offer or a fresh URL would be for)."""
    statuses = (DeploymentStatus.PENDING, *IN_FLIGHT)
    return Deployment.objects.filter(device_id=device_id, status__in=statuses).exists()


def device_download_in_progress(*, device_id: int) -> Deployment | None:
    """The deployment whose image the device is fetching, while the offer's rules still hold: its check-in answer
    repeats the offer with a fresh URL, so a download that outlives its token resumes with a new one."""
    deployment = (
        Deployment.objects.select_related("release__artifact", "rollout__change", "device")
        .filter(device_id=device_id, status=DeploymentStatus.DOWNLOADING)
        .order_by("-pk")
        .first()
    )
    if deployment is None or deployment_withdrawal(deployment, deployment.device) is not None:
        return None
    return deployment


def device_artifact_downloadable(*, device: Device, deployment_id: int, sha256: str) -> bool:
    """True while the device's deployment offers this image and the offer's rules still hold (one query + rules).

    The offer's rules hold for every range: a quarantined device, a closed change, a halted rollout or a tripped
    breaker stop the bytes too, not only new offers."""
    deployment = (
        Deployment.objects.select_related("release__artifact", "rollout__change")
        .filter(pk=deployment_id, device=device, status__in=DOWNLOADABLE, release__artifact__sha256=sha256)
        .first()
    )
    return deployment is not None and deployment_withdrawal(deployment, device) is None


def download_recheck_seconds() -> int:
    """How long a verdict of `device_artifact_downloadable` is reused for further ranges (the bound on how late a
    withdrawal, halt or quarantine stops new ranges); 0 asks the database for every range."""
    return max(0, int(getattr(settings, "OTA_DOWNLOAD_RECHECK_SECONDS", DEFAULT_DOWNLOAD_RECHECK_SECONDS)))


@dataclass(frozen=True)
class DownloadVerdict:
    """Whether the rules let this device fetch this deployment's image, and when the database said so."""

    allowed: bool
    decided_at: float


def _verdict_cache() -> BaseCache:
    return caches[getattr(settings, "OTA_DOWNLOAD_VERDICT_CACHE", "default")]


def device_download_allowed(*, device: Device, deployment_id: int, sha256: str, fresh: bool = False) -> DownloadVerdict:
    """`device_artifact_downloadable`, its verdict reused for `download_recheck_seconds()` from when it was decided.

    The verdict lives in OTA_DOWNLOAD_VERDICT_CACHE (the web process's memory by default: each process asks the
    database at most once per period per download). The key names device, deployment and image, so a verdict never
    answers another request's question. If that cache fails the database answers (never a range the rules refuse).
    `fresh`: ask the database now and keep that verdict (nginx's vouch renewing before the reused one runs out)."""
    ttl = download_recheck_seconds()
    if not ttl:
        allowed = device_artifact_downloadable(device=device, deployment_id=deployment_id, sha256=sha256)
        return DownloadVerdict(allowed=allowed, decided_at=time.time())
    key = f"ota:download:allowed:{device.pk}:{deployment_id}:{sha256}"
    cache = _verdict_cache()
    cached = None
    try:
        if not fresh:
            cached = cache.get(key)
    except Exception:  # noqa: BLE001 - no cache: ask the database
        logger.warning("download verdict cache unavailable; asking the database", exc_info=True)
    if isinstance(cached, DownloadVerdict):
        return cached
    verdict = DownloadVerdict(
        allowed=device_artifact_downloadable(device=device, deployment_id=deployment_id, sha256=sha256),
        decided_at=time.time(),
    )
    try:
        cache.set(key, verdict, ttl)
    except Exception:  # noqa: BLE001 - the verdict stands; the next range asks again
        logger.warning("download verdict cache unavailable", exc_info=True)
    return verdict


@dataclass(frozen=True)
class DownloadPass:
    """A range's whole answer to "may this presenter fetch this image now", valid until `until` (epoch seconds).

    Written by the full path once it authenticated the presented identity (against the database) and found the
    rules allow the download; it holds the proof (the certificate's fingerprint, or the development mode's secret
    hash) and the device as then read, so the short path (`devices.edge.views.quick_artifact`) checks the same
    identity without the database. `until` is the rules verdict's decision time plus `download_recheck_seconds()`:
    a revoked certificate, a decommissioned or quarantined device and a withdrawn deployment all stop new ranges
    within that bound."""

    proof: str
    device: Device
    until: float


def _pass_key(presenter: str, deployment_id: int, sha256: str) -> str:
    return f"ota:download:pass:{presenter}:{deployment_id}:{sha256}"


def download_pass_store(
    *, presented: PresentedIdentity, device: Device, deployment_id: int, sha256: str, verdict: DownloadVerdict
) -> None:
    """Keep what the full path established about this identity and download for the short path (until the bound)."""
    until = verdict.decided_at + download_recheck_seconds()
    remaining = until - time.time()
    if not verdict.allowed or remaining <= 0:
        return
    granted = DownloadPass(proof=presented.proof, device=device, until=until)
    try:
        _verdict_cache().set(_pass_key(presented.key, deployment_id, sha256), granted, max(1, math.ceil(remaining)))
    except Exception:  # noqa: BLE001 - no pass: the next range takes the full path
        logger.warning("download verdict cache unavailable", exc_info=True)


def download_pass_get(*, presented: PresentedIdentity, deployment_id: int, sha256: str) -> DownloadPass | None:
    """The live pass for this identity, deployment and image (its proof matches what is presented); None sends the
    range to the full path."""
    try:
        granted = _verdict_cache().get(_pass_key(presented.key, deployment_id, sha256))
    except Exception:  # noqa: BLE001 - no cache: the full path decides
        return None
    if not isinstance(granted, DownloadPass) or time.time() >= granted.until:
        return None
    if not hmac.compare_digest(granted.proof, presented.proof):
        return None
    return granted


def download_pass_device(*, presented: PresentedIdentity, deployment_id: int, sha256: str) -> Device | None:
    """The device of a live pass for this identity, deployment and image; None sends the range to the full path."""
    granted = download_pass_get(presented=presented, deployment_id=deployment_id, sha256=sha256)
    return granted.device if granted is not None else None


def telemetry_deployments(
    *, device: Device, samples: list[dict[str, Any]]
) -> tuple[dict[int, SampleAttribution], list[int]]:
    """The device's own deployments the samples name (with what their samples measure), and the ids of those it does
    not have, ascending (the one read of THE rule that telemetry names only the device's own deployments)."""
    named = {s["deployment_id"] for s in samples if s.get("deployment_id")}
    own = deployment_attributions(device=device, deployment_ids=named) if named else {}
    return own, sorted(named - set(own))


def telemetry_accept(*, device: Device, samples: list[dict[str, Any]], batch_id: str | None) -> BatchAcceptance:
    """Accept a device's KPI batch for asynchronous processing; samples may name only the device's own deployments
    (and count toward their release and wave: rollouts.signal_gates.deployment_attributions).

    Not a transaction of its own: it only reads before the batch's atomic insert (a refusal's security event is
    written on its own connection anyway), and each transaction is two round trips a batch would wait on."""
    own, unknown = telemetry_deployments(device=device, samples=samples)
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
    return telemetry_batch_accept(device=device, samples=samples, batch_id=batch_id, deployments=own)
