"""The recurring audits' findings raise alerts: one per new finding up to a cap, then one summary; the certificate
and signing audits reach security officers too."""

from __future__ import annotations

import pytest
from django.core import mail
from django.utils import timezone

from approvals.audit.choices import AuditKind
from approvals.audit.findings import ALERTED_PER_RUN, Finding, findings_sync
from ota_project.alerts.models import Alert
from ota_project.roles import Role
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db


def _stale(serial: str, severity: str = "warning") -> Finding:
    return Finding("device", serial, "not_seen", severity, f"Device {serial} has not checked in for 9 days.")


def _sync(kind: str, findings: list[Finding], capture) -> None:
    with capture(execute=True):
        findings_sync(kind=kind, findings=findings, now=timezone.now())


def test_a_new_finding_raises_one_alert_linking_to_its_audit_and_a_rerun_raises_none(
    django_capture_on_commit_callbacks, make_user
):
    make_user(Role.OPERATOR, email="olga@example.com")
    _sync(AuditKind.STALE_DEVICES, [_stale("TCU-1", "critical")], django_capture_on_commit_callbacks)
    [alert] = Alert.objects.all()
    assert (alert.kind, alert.severity) == ("audit.stale_devices", "critical")
    assert alert.dedup_key == "audit:stale_devices:device:TCU-1:not_seen"
    assert alert.link == "/audit/findings/?kind=stale_devices" and alert.evidence["subject"] == "TCU-1"
    assert [message.to for message in mail.outbox] == [["olga@example.com"]]
    _sync(AuditKind.STALE_DEVICES, [_stale("TCU-1", "critical")], django_capture_on_commit_callbacks)
    assert Alert.objects.count() == 1 and Alert.objects.get().occurrences == 1  # kept open, not opened again


def test_a_burst_of_findings_is_capped_with_one_summary_alert(django_capture_on_commit_callbacks):
    findings = [_stale(f"TCU-{n:03d}") for n in range(ALERTED_PER_RUN + 5)]
    _sync(AuditKind.STALE_DEVICES, findings, django_capture_on_commit_callbacks)
    assert Alert.objects.count() == ALERTED_PER_RUN + 1
    summary = Alert.objects.get(dedup_key="audit:stale_devices:many")
    assert summary.evidence == {"audit": "stale_devices", "opened": ALERTED_PER_RUN + 5, "critical": 0}


def test_certificate_findings_reach_security_officers(django_capture_on_commit_callbacks, make_user):
    make_user(Role.SECURITY_OFFICER, email="sam@example.com")
    UserFactory(email="nobody@example.com")  # no role: never mailed
    finding = Finding("device_certificate", "ab12", "expiring", "warning", "Certificate of TCU-9 expires in 5 days.")
    _sync(AuditKind.CERTIFICATES, [finding], django_capture_on_commit_callbacks)
    assert Alert.objects.get().kind == "security.audit.certificates"
    assert [message.to for message in mail.outbox] == [["sam@example.com"]]
