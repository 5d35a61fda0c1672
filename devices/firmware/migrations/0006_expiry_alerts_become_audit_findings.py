# The expiry audit's alerts become audit findings of kind `signing_expiry` (one finding model, one place that opens,
# refreshes and resolves findings: approvals.audit.findings). Every row is carried over, open and resolved.

from django.db import migrations


def alerts_to_findings(apps, schema_editor):
    ExpiryAlert = apps.get_model("firmware", "ExpiryAlert")
    AuditFinding = apps.get_model("audit", "AuditFinding")
    AuditFinding.objects.bulk_create(
        [
            AuditFinding(
                kind="signing_expiry",
                subject_type=alert.subject_type,
                subject=alert.subject,
                code=alert.code,
                severity=alert.severity,
                message=alert.message,
                evidence={"expires_at": alert.expires_at.isoformat()} if alert.expires_at else {},
                first_seen_at=alert.first_seen_at,
                last_seen_at=alert.last_seen_at,
                resolved_at=alert.resolved_at,
            )
            for alert in ExpiryAlert.objects.order_by("pk").iterator()
        ],
        batch_size=1000,
    )


def findings_to_alerts(apps, schema_editor):
    ExpiryAlert = apps.get_model("firmware", "ExpiryAlert")
    AuditFinding = apps.get_model("audit", "AuditFinding")
    for finding in AuditFinding.objects.filter(kind="signing_expiry").order_by("pk").iterator():
        expires_at = (finding.evidence or {}).get("expires_at")
        ExpiryAlert.objects.create(
            subject_type=finding.subject_type,
            subject=finding.subject,
            code=finding.code,
            severity=finding.severity,
            message=finding.message,
            expires_at=expires_at,
            first_seen_at=finding.first_seen_at,
            last_seen_at=finding.last_seen_at,
            resolved_at=finding.resolved_at,
        )
    AuditFinding.objects.filter(kind="signing_expiry").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("firmware", "0005_director_root"),
        ("audit", "0006_audit_findings"),
    ]

    operations = [
        migrations.RunPython(alerts_to_findings, findings_to_alerts),
        migrations.DeleteModel(name="ExpiryAlert"),
    ]
