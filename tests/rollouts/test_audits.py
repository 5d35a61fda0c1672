"""The recurring audits: each finds a planted case, keeps the finding up to date, and resolves it once fixed."""

from __future__ import annotations

import datetime as dt
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.utils import timezone

from approvals.audit.choices import AuditKind, SecurityEventKind
from approvals.audit.findings import Finding, findings_sync
from approvals.audit.models import AuditFinding, DecisionRecord, SecurityEvent
from approvals.choices import ChangeStatus
from devices.choices import CertificateStatus, DeviceStatus
from devices.models import Device, DeviceCertificate, TelemetrySample
from rollouts.audits import audit_run
from rollouts.choices import DeploymentKind, DeploymentStatus
from rollouts.models import Deployment, Rollout, Wave
from tests.factories import ChangeRequestFactory, UserFactory

pytestmark = pytest.mark.django_db

NOW = timezone.now().replace(microsecond=0)


def open_findings(kind: str) -> dict[tuple[str, str], AuditFinding]:
    return {(f.subject, f.code): f for f in AuditFinding.objects.filter(kind=kind, resolved_at__isnull=True)}


def seen_recently(now=NOW) -> None:
    Device.objects.update(last_seen_at=now - timedelta(hours=1))


def test_findings_sync_opens_refreshes_and_resolves_with_one_decision_record_per_change(db):
    first = Finding("device", "TCU1", "not_seen", "warning", "gone a week")
    result = findings_sync(kind=AuditKind.STALE_DEVICES, findings=[first], now=NOW)
    assert (result.opened, result.open) == (1, 1)
    records = DecisionRecord.objects.filter(action="audit.findings", object_id=AuditKind.STALE_DEVICES)
    assert records.count() == 1 and (records.get().after or {})["opened_subjects"] == [["device", "TCU1", "not_seen"]]

    worse = Finding("device", "TCU1", "not_seen", "critical", "gone a month", {"days": 30})
    again = findings_sync(kind=AuditKind.STALE_DEVICES, findings=[worse, worse], now=NOW + timedelta(hours=1))
    row = AuditFinding.objects.get()
    assert (again.opened, again.refreshed, again.critical) == (0, 1, 1)
    assert (row.severity, row.message, row.evidence, row.first_seen_at) == (
        "critical",
        "gone a month",
        {"days": 30},
        NOW,
    )
    assert row.last_seen_at == NOW + timedelta(hours=1) and records.count() == 1  # a refresh records nothing

    gone = findings_sync(kind=AuditKind.STALE_DEVICES, findings=[], now=NOW + timedelta(hours=2))
    row.refresh_from_db()
    assert gone.resolved == 1 and row.resolved_at == NOW + timedelta(hours=2) and records.count() == 2
    # Another kind's findings are untouched by this kind's run; unknown kinds and severities are refused.
    findings_sync(kind=AuditKind.TELEMETRY_GAPS, findings=[first], now=NOW)
    findings_sync(kind=AuditKind.STALE_DEVICES, findings=[], now=NOW + timedelta(hours=3))
    assert AuditFinding.objects.filter(kind=AuditKind.TELEMETRY_GAPS, resolved_at__isnull=True).count() == 1
    with pytest.raises(ValueError):
        findings_sync(kind="everything", findings=[], now=NOW)
    with pytest.raises(ValueError):
        findings_sync(kind=AuditKind.STALE_DEVICES, findings=[Finding("d", "x", "c", "meh", "m")], now=NOW)


def test_stale_devices_are_flagged_and_resolved_when_they_check_in(fleet, settings):
    settings.OTA_AUDIT_STALE_DEVICE_DAYS = 7
    seen_recently()
    quiet, never, revoked = Device.objects.order_by("pk")[:3]
    Device.objects.filter(pk=quiet.pk).update(last_seen_at=NOW - timedelta(days=8))
    Device.objects.filter(pk=never.pk).update(last_seen_at=None, created_at=NOW - timedelta(days=30))
    Device.objects.filter(pk=revoked.pk).update(
        last_seen_at=None, status=DeviceStatus.REVOKED, status_reason="stolen"
    )  # expected silent

    audit_run(kind=AuditKind.STALE_DEVICES, now=NOW)
    assert set(open_findings(AuditKind.STALE_DEVICES)) == {(quiet.serial, "not_seen"), (never.serial, "never_seen")}

    Device.objects.filter(pk=quiet.pk).update(last_seen_at=NOW)
    result = audit_run(kind=AuditKind.STALE_DEVICES, now=NOW + timedelta(minutes=5))
    assert set(open_findings(AuditKind.STALE_DEVICES)) == {(never.serial, "never_seen")}
    assert result.resolved == 1 and AuditFinding.objects.get(subject=quiet.serial).resolved_at is not None


def test_inventory_drift_flags_unknown_and_unexpected_versions_but_not_a_deployment_under_way(fleet):
    unknown, unexpected, updating, registered = Device.objects.filter(hardware_model=fleet["model"]).order_by("pk")[:4]
    Device.objects.update(reported_version="1.0.0", reported_at=NOW)
    Device.objects.filter(pk=unknown.pk).update(reported_version="6.6.6")
    Device.objects.filter(pk=unexpected.pk).update(reported_version="1.1.0")
    Device.objects.filter(pk=updating.pk).update(reported_version="1.1.0")
    Device.objects.filter(pk=registered.pk).update(installed_version="0.9-unknown", reported_at=None)
    change = ChangeRequestFactory.create(release=fleet["new"], rollback_release=fleet["old"])
    rollout = Rollout.objects.create(
        change=change, release=fleet["new"], rollback_release=fleet["old"], plan={}, plan_hash="0" * 64,
        started_by=UserFactory.create(roles=["operator"]),
    )  # fmt: skip
    wave = Wave.objects.create(rollout=rollout, index=0, name="pilot")
    Deployment.objects.create(
        rollout=rollout, wave=wave, device=updating, release=fleet["new"], status=DeploymentStatus.INSTALLING
    )

    audit_run(kind=AuditKind.INVENTORY_DRIFT, now=NOW)
    found = open_findings(AuditKind.INVENTORY_DRIFT)
    assert set(found) == {
        (unknown.serial, "unknown_version"),
        (unexpected.serial, "unexpected_version"),
        (registered.serial, "unknown_installed_version"),
    }
    assert found[(unknown.serial, "unknown_version")].severity == "critical"
    assert found[(unknown.serial, "unknown_version")].evidence["reported_version"] == "6.6.6"

    Device.objects.filter(pk=unknown.pk).update(reported_version="1.0.0")
    Device.objects.filter(pk=unexpected.pk).update(installed_version="1.1.0")
    Device.objects.filter(pk=registered.pk).update(installed_version="1.0.0")
    audit_run(kind=AuditKind.INVENTORY_DRIFT, now=NOW + timedelta(minutes=5))
    assert open_findings(AuditKind.INVENTORY_DRIFT) == {}


def test_overdue_post_implementation_reviews_are_flagged_escalated_and_resolved_when_done(fleet):
    overdue = ChangeRequestFactory.create(
        status=ChangeStatus.COMPLETED, post_review_due_at=NOW - timedelta(days=1), post_review_done_at=None
    )
    ChangeRequestFactory.create(status=ChangeStatus.COMPLETED, post_review_due_at=NOW + timedelta(days=30))
    ChangeRequestFactory.create(
        status=ChangeStatus.COMPLETED, post_review_due_at=NOW - timedelta(days=1), post_review_done_at=NOW
    )

    audit_run(kind=AuditKind.OVERDUE_REVIEWS, now=NOW)
    assert [(f.subject, f.severity) for f in open_findings(AuditKind.OVERDUE_REVIEWS).values()] == [
        (str(overdue.pk), "warning")
    ]
    audit_run(kind=AuditKind.OVERDUE_REVIEWS, now=NOW + timedelta(days=8))
    assert open_findings(AuditKind.OVERDUE_REVIEWS)[(str(overdue.pk), "review_overdue")].severity == "critical"

    type(overdue).objects.filter(pk=overdue.pk).update(post_review_done_at=NOW + timedelta(days=8))
    audit_run(kind=AuditKind.OVERDUE_REVIEWS, now=NOW + timedelta(days=8, minutes=5))
    assert open_findings(AuditKind.OVERDUE_REVIEWS) == {}


def test_telemetry_gaps_flag_updated_devices_silent_since_their_update(fleet, settings):
    settings.OTA_AUDIT_TELEMETRY_GAP_HOURS = 24
    silent, talking, recent = Device.objects.filter(hardware_model=fleet["model"]).order_by("pk")[:3]
    change = ChangeRequestFactory.create(release=fleet["new"], rollback_release=fleet["old"])
    rollout = Rollout.objects.create(
        change=change, release=fleet["new"], rollback_release=fleet["old"], plan={}, plan_hash="0" * 64,
        started_by=UserFactory.create(roles=["operator"]),
    )  # fmt: skip
    wave = Wave.objects.create(rollout=rollout, index=0, name="pilot")
    for device, finished in ((silent, NOW - timedelta(hours=30)), (talking, NOW - timedelta(hours=30)),
                             (recent, NOW - timedelta(hours=2))):  # fmt: skip
        Deployment.objects.create(
            rollout=rollout, wave=wave, device=device, release=fleet["new"], kind=DeploymentKind.UPDATE,
            status=DeploymentStatus.SUCCEEDED, finished_at=finished,
        )  # fmt: skip
    TelemetrySample.objects.create(device=talking, reported_at=NOW - timedelta(hours=3), boot_time_s=30)

    audit_run(kind=AuditKind.TELEMETRY_GAPS, now=NOW)
    found = open_findings(AuditKind.TELEMETRY_GAPS)
    assert set(found) == {(silent.serial, "no_telemetry_since_update")}
    assert found[(silent.serial, "no_telemetry_since_update")].evidence["rollout"] == rollout.pk

    TelemetrySample.objects.create(device=silent, reported_at=NOW, boot_time_s=31)
    audit_run(kind=AuditKind.TELEMETRY_GAPS, now=NOW + timedelta(minutes=5))
    assert open_findings(AuditKind.TELEMETRY_GAPS) == {}


def _certificate(device: Device, serial: str, *, not_after, status=CertificateStatus.ACTIVE, issued_at=None):
    ended = None if status == CertificateStatus.ACTIVE else NOW - timedelta(days=1)
    return DeviceCertificate.objects.create(
        device=device, fingerprint=serial.ljust(64, "0"), serial_number=serial, not_before=NOW - timedelta(days=300),
        not_after=not_after, issued_at=issued_at or NOW - timedelta(days=1), status=status, ended_at=ended,
    )  # fmt: skip


def _server_certificate(path, not_after: dt.datetime) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ota.example")])
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(NOW - timedelta(days=300))
        .not_valid_after(not_after).sign(key, hashes.SHA256())
    )  # fmt: skip
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def test_certificate_audit_flags_expiry_ended_certificates_presenting_and_devices_not_presenting(
    fleet, settings, tmp_path
):
    settings.DEVICE_PKI_DIR = tmp_path
    settings.OTA_AUDIT_CERT_WARN_DAYS = 30
    settings.OTA_AUDIT_CERT_ABSENT_DAYS = 14
    seen_recently()
    soon, expired, thief, absent = Device.objects.order_by("pk")[:4]
    _certificate(soon, "aa01", not_after=NOW + timedelta(days=10))
    _certificate(expired, "aa02", not_after=NOW - timedelta(hours=1))
    _certificate(thief, "aa03", not_after=NOW + timedelta(days=300), status=CertificateStatus.REVOKED)
    _certificate(thief, "aa04", not_after=NOW + timedelta(days=300))
    _certificate(absent, "aa05", not_after=NOW + timedelta(days=300), issued_at=NOW - timedelta(days=20))
    Device.objects.filter(pk=absent.pk).update(last_seen_at=NOW - timedelta(days=15))
    SecurityEvent.objects.create(
        kind=SecurityEventKind.DEVICE_AUTH_FAILED, source="device_api.checkin", bucket=NOW, key="k",
        device_serial=thief.serial, subject="certificate:aa03", message="A revoked device certificate was presented.",
        first_at=NOW - timedelta(hours=2), last_at=NOW - timedelta(hours=1),
    )  # fmt: skip
    _server_certificate(tmp_path / "server.pem", NOW + timedelta(days=5))
    _server_certificate(tmp_path / "root.pem", NOW + timedelta(days=3650))

    audit_run(kind=AuditKind.CERTIFICATES, now=NOW)
    found = open_findings(AuditKind.CERTIFICATES)
    assert {key: f.severity for key, f in found.items()} == {
        ("aa01", "expires_soon"): "warning",
        ("aa02", "expired"): "critical",
        ("aa03", "revoked_presenting"): "critical",
        (absent.serial, "certificate_not_presented"): "warning",
        ("server", "expires_soon"): "warning",
    }
    assert found[("aa03", "revoked_presenting")].evidence["device"] == thief.serial

    # Renewed, the thief gone quiet, the absent unit back, the server certificate renewed: all resolved.
    DeviceCertificate.objects.filter(serial_number__in=["aa01", "aa02"]).update(not_after=NOW + timedelta(days=365))
    Device.objects.filter(pk=absent.pk).update(last_seen_at=NOW)
    _server_certificate(tmp_path / "server.pem", NOW + timedelta(days=90))
    later = NOW + timedelta(hours=30)
    audit_run(kind=AuditKind.CERTIFICATES, now=later)
    assert open_findings(AuditKind.CERTIFICATES) == {}
    assert AuditFinding.objects.filter(kind=AuditKind.CERTIFICATES, resolved_at=later).count() == 5


def test_an_unknown_audit_kind_is_refused(db):
    with pytest.raises(ValueError):
        audit_run(kind="devices; drop table")
    assert not AuditFinding.objects.exists()


def test_the_audits_command_runs_every_audit_and_lists_findings(fleet, settings):
    from io import StringIO

    from django.core.management import call_command

    settings.OTA_AUDIT_STALE_DEVICE_DAYS = 7
    seen_recently()
    quiet = Device.objects.order_by("pk")[0]
    Device.objects.filter(pk=quiet.pk).update(last_seen_at=timezone.now() - timedelta(days=9))
    out = StringIO()
    call_command("audits", "run", stdout=out)
    assert "stale_devices: 1 open (0 critical); opened 1, resolved 0" in out.getvalue()
    assert all(f"{kind}:" in out.getvalue() for kind in AuditKind.values if kind != AuditKind.SIGNING_EXPIRY)
    listed = StringIO()
    call_command("audits", "list", "--kind", "stale_devices", stdout=listed)
    assert f"device:{quiet.serial} not_seen (open)" in listed.getvalue()


def test_a_fleet_wide_outage_is_one_burst_of_alerts_not_one_per_device(db, caplog, django_capture_on_commit_callbacks):
    findings = [
        Finding("device", f"TCU{i:05d}", "not_seen", "warning", f"Device TCU{i:05d} is quiet.") for i in range(500)
    ]
    findings.append(Finding("device", "TCU99999", "never_seen", "critical", "Device TCU99999 never came."))
    with caplog.at_level("WARNING", logger="ota.audits"), django_capture_on_commit_callbacks(execute=True):
        result = findings_sync(kind=AuditKind.STALE_DEVICES, findings=findings, now=NOW)
    lines = [record.getMessage() for record in caplog.records if record.name == "ota.audits"]
    assert result.opened == 501 and AuditFinding.objects.count() == 501
    assert len(lines) == 21 and "never came" in lines[0]  # critical first
    assert "481 more findings opened (1 critical in all)" in lines[-1]
    assert DecisionRecord.objects.filter(action="audit.findings").count() == 1
