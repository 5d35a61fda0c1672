"""Findings of the recurring audits: the one place that opens, refreshes and resolves them.

An audit (rollouts.audits) computes what it sees right now as a list of `Finding`s and hands it to
`findings_sync`, which, under one lock per audit kind:
- opens a row for each finding not open yet,
- refreshes the open ones still found (last_seen_at, and severity, message and evidence when they changed),
- resolves the open ones no longer found (the device checked in again, the review was done, the certificate renewed).
Each run that opens or resolves anything appends one decision record naming what it opened and resolved (one per
run, not per finding: a fleet-wide outage must not append a hundred thousand records), and hands the new findings
to `audit_findings_opened`, the alert hook, after the commit. Idempotent: a second run with the same findings
changes nothing but last_seen_at.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.db import connection, transaction
from django.db.models import Case, DateTimeField, F, QuerySet, Value, When
from django.db.models.functions import Greatest
from django.urls import reverse

from approvals.audit.choices import AuditKind, FindingSeverity
from approvals.audit.models import AuditFinding
from approvals.audit.records import record_decision
from ota_project.alerts.services import raise_alert
from ota_project.errors import DomainError

logger = logging.getLogger("ota.audits")

# Subjects named in one run's decision record (the rest are counted): the findings page lists them all.
RECORDED_SUBJECTS = 100
# Findings the alert hook reports one by one per run; the rest in one summary.
ALERTED_PER_RUN = 20
# Audits whose alerts go to security officers as well (alert kinds under `security.`).
SECURITY_AUDITS = frozenset({AuditKind.CERTIFICATES, AuditKind.SIGNING_EXPIRY})
_CHUNK = 2000


@dataclass(frozen=True)
class Finding:
    """One thing an audit flags right now."""

    subject_type: str
    subject: str
    code: str
    severity: str
    message: str
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def identity(self) -> tuple[str, str, str]:
        return (self.subject_type, self.subject, self.code)


@dataclass(frozen=True)
class FindingsSynced:
    """What one run changed: findings opened, refreshed and resolved, and how many are open (and critical) now."""

    opened: int
    refreshed: int
    resolved: int
    open: int
    critical: int


def audit_findings_opened(*, kind: str, findings: Sequence[Finding]) -> None:
    """The alert hook: called once per run of audit `kind`, after the commit, with the findings it opened.

    The first ALERTED_PER_RUN (critical ones first) each raise an alert (dedup key
    `audit:<kind>:<subject_type>:<subject>:<code>`); the rest one summary alert `audit:<kind>:many`, so a fleet-wide
    outage (every device stale at once) is one burst of mail, not a hundred thousand. Alerts link to the findings
    page filtered by the audit; the certificate and signing audits reach security officers as well as operators.
    An alert that cannot be raised is logged: the findings are committed and shown either way."""
    ordered = sorted(findings, key=lambda f: (f.severity != FindingSeverity.CRITICAL, f.identity))
    alert_kind = f"{'security.' if kind in SECURITY_AUDITS else ''}audit.{kind}"
    link = f"{reverse('web-audit:findings')}?kind={kind}"
    label = AuditKind(kind).label if kind in AuditKind.values else kind
    for finding in ordered[:ALERTED_PER_RUN]:
        (logger.error if finding.severity == FindingSeverity.CRITICAL else logger.warning)(
            "audit %s: %s", kind, finding.message
        )
        _alert(
            kind=alert_kind,
            dedup_key=f"audit:{kind}:{finding.subject_type}:{finding.subject}:{finding.code}"[:200],
            title=f"{label}: {finding.message}"[:200].splitlines()[0],
            summary=finding.message,
            link=link,
            evidence={"audit": kind, "subject_type": finding.subject_type, "subject": finding.subject,
                      "code": finding.code, **finding.evidence},
            severity=finding.severity,
        )  # fmt: skip
    if len(ordered) > ALERTED_PER_RUN:
        more = len(ordered) - ALERTED_PER_RUN
        critical = sum(1 for f in ordered if f.severity == FindingSeverity.CRITICAL)
        logger.warning("audit %s: %d more findings opened (%d critical in all): see %s", kind, more, critical, link)
        _alert(
            kind=alert_kind,
            dedup_key=f"audit:{kind}:many",
            title=f"{label}: {len(ordered)} new findings in one run",
            summary=f"{len(ordered)} findings opened in one run ({critical} critical); the findings page lists them all.",
            link=link,
            evidence={"audit": kind, "opened": len(ordered), "critical": critical},
            severity=FindingSeverity.CRITICAL if critical else FindingSeverity.WARNING,
        )


def _alert(**alert: Any) -> None:
    try:
        with transaction.atomic():
            raise_alert(**alert)
    except DomainError:  # noqa: PERF203 - one bad subject must not hide the others' alerts
        logger.exception("audit alert refused: %s", alert.get("dedup_key"))


def _lock(kind: str) -> None:
    """One run per audit kind at a time: two overlapping runs would both open the same finding."""
    lock_id = int.from_bytes(hashlib.sha256(f"ota-audit:{kind}".encode()).digest()[:8], "big", signed=True)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_xact_lock(%s)", [lock_id])


def _chunks(values: list[int]) -> Iterable[list[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


@transaction.atomic
def findings_sync(*, kind: str, findings: Sequence[Finding], now: datetime) -> FindingsSynced:
    """Make the open findings of audit `kind` equal `findings`: open new ones, refresh present ones, resolve gone
    ones; one decision record per run that opens or resolves anything. Idempotent."""
    if kind not in AuditKind.values:
        raise ValueError(f"Unknown audit kind {kind!r}")
    _lock(kind)
    current: dict[tuple[str, str, str], Finding] = {}
    for finding in findings:  # one finding per identity: the last one an audit produced wins
        if finding.severity not in FindingSeverity.values:
            raise ValueError(f"Unknown severity {finding.severity!r}")
        current[finding.identity] = finding
    open_rows = {
        (subject_type, subject, code): (pk, severity, message, evidence)
        for pk, subject_type, subject, code, severity, message, evidence in AuditFinding.objects.filter(
            kind=kind, resolved_at__isnull=True
        ).values_list("pk", "subject_type", "subject", "code", "severity", "message", "evidence")
    }
    new = [finding for identity, finding in current.items() if identity not in open_rows]
    kept: list[int] = []
    for identity, (pk, severity, message, evidence) in open_rows.items():
        present = current.get(identity)
        if present is None:
            continue
        kept.append(pk)
        if (severity, message, evidence) != (present.severity, present.message, present.evidence):
            AuditFinding.objects.filter(pk=pk).update(
                severity=present.severity, message=present.message, evidence=present.evidence
            )
    gone = sorted(
        ((pk, identity) for identity, (pk, *_rest) in open_rows.items() if identity not in current),
        key=lambda item: item[1],
    )
    for chunk in _chunks(kept):
        AuditFinding.objects.filter(pk__in=chunk).update(last_seen_at=now)
    for chunk in _chunks([pk for pk, _identity in gone]):
        # Never before it was first seen (a run whose clock lags the one that opened it): the constraint says so.
        resolved_at = Greatest(Value(now, output_field=DateTimeField()), F("first_seen_at"))
        AuditFinding.objects.filter(pk__in=chunk).update(resolved_at=resolved_at)
    AuditFinding.objects.bulk_create(
        [
            AuditFinding(
                kind=kind,
                subject_type=finding.subject_type,
                subject=finding.subject,
                code=finding.code,
                severity=finding.severity,
                message=finding.message,
                evidence=finding.evidence,
                first_seen_at=now,
                last_seen_at=now,
            )
            for finding in sorted(new, key=lambda f: f.identity)
        ],
        batch_size=_CHUNK,
    )
    if new or gone:
        record_decision(
            actor=None,
            system_actor=f"audit:{kind}",
            action="audit.findings",
            object_type="audit",
            object_id=kind,
            after={
                "opened": len(new),
                "resolved": len(gone),
                "open": len(current),
                "opened_subjects": [list(f.identity) for f in sorted(new, key=lambda f: f.identity)][
                    :RECORDED_SUBJECTS
                ],
                "resolved_subjects": [list(identity) for _pk, identity in gone][:RECORDED_SUBJECTS],
            },
        )
    if new:
        opened = sorted(new, key=lambda f: f.identity)
        transaction.on_commit(lambda: audit_findings_opened(kind=kind, findings=opened))
    return FindingsSynced(
        opened=len(new),
        refreshed=len(kept),
        resolved=len(gone),
        open=len(current),
        critical=sum(1 for f in current.values() if f.severity == FindingSeverity.CRITICAL),
    )


def audit_finding_list(*, kind: str = "", severity: str = "", include_resolved: bool = False) -> QuerySet[AuditFinding]:
    """Findings, open ones first (most severe first), optionally of one kind or severity or with resolved ones."""
    findings = AuditFinding.objects.all()
    if kind:
        findings = findings.filter(kind=kind)
    if severity:
        findings = findings.filter(severity=severity)
    if not include_resolved:
        findings = findings.filter(resolved_at__isnull=True)
    critical_first = Case(When(severity=FindingSeverity.CRITICAL, then=Value(0)), default=Value(1))
    return findings.order_by(F("resolved_at").desc(nulls_first=True), critical_first, "kind", "-first_seen_at", "pk")
