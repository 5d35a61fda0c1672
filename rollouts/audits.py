"""The recurring audits: what each one flags, computed from the database with a few aggregate queries.

Each `<kind>_findings(now)` reads and returns findings (no writes); `audit_run(kind=...)` hands them to
approvals.audit.findings.findings_sync, which opens, refreshes and resolves the rows. The Temporal schedules
`audit-<kind>` (workflows/schedules.py) run them through RecurringAuditWorkflow; `manage.py audits run` by hand.

- stale_devices: an active or quarantined device not seen for OTA_AUDIT_STALE_DEVICE_DAYS (never seen: entered
  the inventory that long ago and never checked in).
- inventory_drift: a device reports a version that is no release of its hardware model (critical: an image no
  change brought), or a known release other than the register's installed version while no deployment of it is
  under way; or the register's installed version is no release of the model.
- overdue_reviews: a change whose post-implementation review is past its due date and not done (critical after
  a further week).
- telemetry_gaps: a device whose last successful deployment finished more than OTA_AUDIT_TELEMETRY_GAP_HOURS ago
  (within the telemetry retention) and that has sent no telemetry since: the health gates cannot see it.
- certificates: device certificates and the server's (server, issuing intermediate, root) expiring within
  OTA_AUDIT_CERT_WARN_DAYS (critical once expired); a revoked (critical) or superseded (warning) device
  certificate presented to the device API in the last OTA_AUDIT_REVOKED_PRESENTING_HOURS; an active device whose
  certificate was issued more than OTA_AUDIT_CERT_ABSENT_DAYS ago and that has not presented one since.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from datetime import datetime, timedelta

from cryptography import x509
from django.conf import settings
from django.db.models import Exists, F, Max, OuterRef, Q, Subquery
from django.utils import timezone

from approvals.audit.choices import AuditKind, FindingSeverity, SecurityEventKind
from approvals.audit.findings import Finding, FindingsSynced, findings_sync
from approvals.audit.models import SecurityEvent
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from devices.choices import CertificateStatus, DeviceStatus
from devices.firmware.models import FirmwareRelease
from devices.models import Device, DeviceCertificate, TelemetryBatch, TelemetrySample
from devices.pki import pki_paths
from rollouts.choices import DEPLOYMENT_ACTIVE, DeploymentStatus
from rollouts.models import Deployment

WARNING = FindingSeverity.WARNING
CRITICAL = FindingSeverity.CRITICAL
# Devices the audits watch: revoked and decommissioned ones are expected to be silent.
WATCHED_STATUSES = (DeviceStatus.ACTIVE, DeviceStatus.QUARANTINED)
REVIEW_CRITICAL_AFTER = timedelta(days=7)
# The security event subject the device API writes for a refused ended certificate (devices.edge.identity).
CERTIFICATE_SUBJECT_PREFIX = "certificate:"


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(dt.UTC).isoformat() if value is not None else None


def _days(name: str) -> timedelta:
    return timedelta(days=int(getattr(settings, name)))


def _hours(name: str) -> timedelta:
    return timedelta(hours=int(getattr(settings, name)))


# --- stale devices --------------------------------------------------------------------------------------------


def stale_device_findings(now: datetime) -> list[Finding]:
    """Watched devices not seen for OTA_AUDIT_STALE_DEVICE_DAYS (or never, since entering the inventory that long)."""
    limit = _days("OTA_AUDIT_STALE_DEVICE_DAYS")
    cutoff = now - limit
    stale = (
        Device.objects.filter(status__in=WATCHED_STATUSES)
        .filter(Q(last_seen_at__lt=cutoff) | Q(last_seen_at__isnull=True, created_at__lt=cutoff))
        .order_by("serial")
        .values_list("serial", "last_seen_at", "created_at", "hardware_model__name")
    )
    findings = []
    for serial, last_seen_at, created_at, model in stale.iterator(chunk_size=5000):
        if last_seen_at is None:
            message = f"Device {serial} has never checked in since it entered the inventory on {created_at:%Y-%m-%d}."
            code = "never_seen"
        else:
            message = f"Device {serial} has not checked in since {last_seen_at:%Y-%m-%d %H:%M} UTC."
            code = "not_seen"
        findings.append(
            Finding(
                "device", serial, code, WARNING, message,
                {"last_seen_at": _iso(last_seen_at), "hardware_model": model, "days": limit.days},
            )
        )  # fmt: skip
    return findings


# --- inventory drift ------------------------------------------------------------------------------------------


def _known_versions() -> set[tuple[int, str]]:
    """(hardware model id, version) of every release made for that model."""
    return set(
        FirmwareRelease.hardware_models.through.objects.values_list("hardwaremodel_id", "firmwarerelease__version")
    )


def inventory_drift_findings(now: datetime) -> list[Finding]:
    """Devices that report (or are registered with) a version the register does not allow them to have."""
    known = _known_versions()
    deploying = Deployment.objects.filter(device_id=OuterRef("pk"), status__in=DEPLOYMENT_ACTIVE)
    release_of_model = FirmwareRelease.hardware_models.through.objects.filter(
        hardwaremodel_id=OuterRef("hardware_model_id")
    )
    has_report = Q(reported_at__isnull=False) & ~Q(reported_version="")
    # Only the candidates leave the database (a fleet in order costs one scan, not a row per device).
    devices = (
        Device.objects.exclude(status=DeviceStatus.DECOMMISSIONED)
        .annotate(
            deploying=Exists(deploying),
            reported_known=Exists(release_of_model.filter(firmwarerelease__version=OuterRef("reported_version"))),
            installed_known=Exists(release_of_model.filter(firmwarerelease__version=OuterRef("installed_version"))),
        )
        .filter(
            (has_report & (Q(reported_known=False) | ~Q(reported_version=F("installed_version"))))
            | Q(installed_known=False)
        )
        .order_by("serial")
        .values_list(
            "serial", "hardware_model_id", "hardware_model__name", "installed_version", "reported_version",
            "reported_at", "deploying",
        )
    )  # fmt: skip
    findings = []
    for serial, model_id, model, installed, reported, reported_at, deploying_now in devices.iterator(chunk_size=5000):
        evidence = {
            "hardware_model": model, "installed_version": installed, "reported_version": reported,
            "reported_at": _iso(reported_at),
        }  # fmt: skip
        if reported_at is not None and reported and (model_id, reported) not in known:
            findings.append(
                Finding(
                    "device", serial, "unknown_version", CRITICAL,
                    f"Device {serial} reports {reported}, which is no release of {model}: an image no change brought.",
                    evidence,
                )
            )  # fmt: skip
        elif reported_at is not None and reported and reported != installed and not deploying_now:
            findings.append(
                Finding(
                    "device", serial, "unexpected_version", WARNING,
                    f"Device {serial} reports {reported} but the register says {installed}, and no deployment is "
                    "under way.",
                    evidence,
                )
            )  # fmt: skip
        if installed and (model_id, installed) not in known:
            findings.append(
                Finding(
                    "device", serial, "unknown_installed_version", WARNING,
                    f"The register has device {serial} on {installed}, which is no release of {model}.",
                    evidence,
                )
            )  # fmt: skip
    return findings


# --- overdue post-implementation reviews ----------------------------------------------------------------------


def overdue_review_findings(now: datetime) -> list[Finding]:
    """Changes whose post-implementation review is past due and not done."""
    overdue = (
        ChangeRequest.objects.filter(
            post_review_due_at__lt=now, post_review_done_at__isnull=True
        )
        .exclude(status=ChangeStatus.CANCELLED)
        .order_by("pk")
        .values_list("pk", "title", "status", "post_review_due_at")
    )  # fmt: skip
    findings = []
    for pk, title, status, due in overdue:
        if due is None:  # never: the filter needs a due date
            continue
        late = now - due
        findings.append(
            Finding(
                "change", str(pk), "review_overdue", CRITICAL if late > REVIEW_CRITICAL_AFTER else WARNING,
                f"Change {pk} ({title}, {status}): post-implementation review was due {due:%Y-%m-%d %H:%M} UTC.",
                {"due_at": _iso(due), "status": status, "days_late": late.days},
            )
        )  # fmt: skip
    return findings


# --- telemetry gaps -------------------------------------------------------------------------------------------


def telemetry_gap_findings(now: datetime) -> list[Finding]:
    """Watched devices updated more than OTA_AUDIT_TELEMETRY_GAP_HOURS ago with no telemetry received since."""
    gap = _hours("OTA_AUDIT_TELEMETRY_GAP_HOURS")
    oldest = now - timedelta(days=int(settings.OTA_TELEMETRY_RETENTION_DAYS))
    last_update = Deployment.objects.filter(device_id=OuterRef("pk"), status=DeploymentStatus.SUCCEEDED).order_by(
        "-finished_at", "-pk"
    )
    updated = (
        Device.objects.filter(status__in=WATCHED_STATUSES)
        .annotate(
            last_update_at=Subquery(last_update.values("finished_at")[:1]),
            last_rollout=Subquery(last_update.values("rollout_id")[:1]),
        )
        .filter(last_update_at__lte=now - gap, last_update_at__gte=oldest)
    )
    sample_since = TelemetrySample.objects.filter(device_id=OuterRef("pk"), received_at__gte=OuterRef("last_update_at"))
    batch_since = TelemetryBatch.objects.filter(device_id=OuterRef("pk"), received_at__gte=OuterRef("last_update_at"))
    silent = (
        updated.annotate(sample=Exists(sample_since), batch=Exists(batch_since))
        .filter(sample=False, batch=False)
        .order_by("serial")
        .values_list("serial", "last_update_at", "installed_version", "last_rollout")
    )
    return [
        Finding(
            "device", serial, "no_telemetry_since_update", WARNING,
            f"Device {serial} was updated to {version} at {updated_at:%Y-%m-%d %H:%M} UTC and has sent no telemetry "
            "since: the health gates cannot see it.",
            {"updated_at": _iso(updated_at), "installed_version": version, "rollout": rollout_id,
             "hours": int(gap.total_seconds() // 3600)},
        )
        for serial, updated_at, version, rollout_id in silent.iterator(chunk_size=5000)
    ]  # fmt: skip


# --- certificates ---------------------------------------------------------------------------------------------


def _expiry_finding(
    subject_type: str, subject: str, what: str, not_after: datetime, now: datetime, evidence: dict[str, object]
) -> Finding | None:
    warn = _days("OTA_AUDIT_CERT_WARN_DAYS")
    evidence = {**evidence, "not_after": _iso(not_after)}
    if not_after <= now:
        return Finding(
            subject_type, subject, "expired", CRITICAL, f"{what} expired at {not_after:%Y-%m-%d %H:%M} UTC.", evidence
        )
    if not_after - now < warn:
        return Finding(
            subject_type, subject, "expires_soon", WARNING,
            f"{what} expires at {not_after:%Y-%m-%d %H:%M} UTC: renew it.", evidence,
        )  # fmt: skip
    return None


def _server_certificate_findings(now: datetime) -> list[Finding]:
    paths = pki_paths()
    findings = []
    for role, path in (
        ("server", paths.server_certificate),
        ("intermediate", paths.intermediate),
        ("root", paths.root),
    ):
        if not path.exists():
            continue
        certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
        finding = _expiry_finding(
            "server_certificate", role, f"The {role} certificate ({path.name})", certificate.not_valid_after_utc, now,
            {"file": path.name, "serial_number": format(certificate.serial_number, "x")},
        )  # fmt: skip
        if finding is not None:
            findings.append(finding)
    return findings


def certificate_findings(now: datetime) -> list[Finding]:
    """Device and server certificates close to expiry, ended ones still presenting, devices not presenting one."""
    findings = _server_certificate_findings(now)
    warn_until = now + _days("OTA_AUDIT_CERT_WARN_DAYS")
    expiring = (
        DeviceCertificate.objects.filter(
            status=CertificateStatus.ACTIVE, not_after__lt=warn_until, device__status__in=WATCHED_STATUSES
        )
        .order_by("serial_number")
        .values_list("serial_number", "not_after", "device__serial")
    )
    for serial_number, not_after, device in expiring.iterator(chunk_size=5000):
        finding = _expiry_finding(
            "device_certificate", serial_number, f"Device {device}'s certificate {serial_number}", not_after, now,
            {"device": device},
        )  # fmt: skip
        if finding is not None:
            findings.append(finding)
    presented = dict(
        SecurityEvent.objects.filter(
            kind=SecurityEventKind.DEVICE_AUTH_FAILED,
            subject__startswith=CERTIFICATE_SUBJECT_PREFIX,
            last_at__gte=now - _hours("OTA_AUDIT_REVOKED_PRESENTING_HOURS"),
        )
        .order_by()
        .values_list("subject")
        .annotate(last=Max("last_at"))
        .values_list("subject", "last")
    )
    serials = [subject.removeprefix(CERTIFICATE_SUBJECT_PREFIX) for subject in presented]
    ended = (
        DeviceCertificate.objects.filter(serial_number__in=serials)
        .exclude(status=CertificateStatus.ACTIVE)
        .order_by("serial_number")
        .values_list("serial_number", "status", "ended_at", "device__serial")
    )
    for serial_number, status, ended_at, device in ended:
        last = presented[CERTIFICATE_SUBJECT_PREFIX + serial_number]
        findings.append(
            Finding(
                "device_certificate", serial_number, f"{status}_presenting",
                CRITICAL if status == CertificateStatus.REVOKED else WARNING,
                f"Device {device}'s {status} certificate {serial_number} was still presented at "
                f"{last:%Y-%m-%d %H:%M} UTC (refused): find the unit or whoever holds its key.",
                {"device": device, "status": status, "ended_at": _iso(ended_at), "last_presented_at": _iso(last)},
            )
        )  # fmt: skip
    absent_cutoff = now - _days("OTA_AUDIT_CERT_ABSENT_DAYS")
    absent = (
        DeviceCertificate.objects.filter(
            status=CertificateStatus.ACTIVE, issued_at__lt=absent_cutoff, device__status=DeviceStatus.ACTIVE
        )
        .filter(Q(device__last_seen_at__isnull=True) | Q(device__last_seen_at__lt=absent_cutoff))
        .order_by("device__serial")
        .values_list("device__serial", "serial_number", "issued_at", "device__last_seen_at")
    )
    for device, serial_number, issued_at, last_seen_at in absent.iterator(chunk_size=5000):
        since = last_seen_at or issued_at
        findings.append(
            Finding(
                "device", device, "certificate_not_presented", WARNING,
                f"Device {device} has not presented its certificate {serial_number} since {since:%Y-%m-%d %H:%M} UTC.",
                {"certificate": serial_number, "issued_at": _iso(issued_at), "last_seen_at": _iso(last_seen_at)},
            )
        )  # fmt: skip
    return findings


AUDITS: dict[str, Callable[[datetime], list[Finding]]] = {
    AuditKind.STALE_DEVICES: stale_device_findings,
    AuditKind.INVENTORY_DRIFT: inventory_drift_findings,
    AuditKind.OVERDUE_REVIEWS: overdue_review_findings,
    AuditKind.TELEMETRY_GAPS: telemetry_gap_findings,
    AuditKind.CERTIFICATES: certificate_findings,
}


def audit_run(*, kind: str, now: datetime | None = None) -> FindingsSynced:
    """Run audit `kind` now: compute its findings and open, refresh and resolve them (idempotent)."""
    if kind not in AUDITS:
        raise ValueError(f"Unknown audit {kind!r}; one of {sorted(AUDITS)}")
    now = now or timezone.now()
    return findings_sync(kind=kind, findings=AUDITS[kind](now), now=now)
