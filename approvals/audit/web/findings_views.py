"""The findings page: what the recurring audits flag (stale devices, inventory drift, overdue reviews, telemetry
gaps, certificates), filterable by audit, severity and state, each linking to the device or change it is about."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.core.paginator import Paginator
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.http import require_GET

from approvals.audit.choices import AuditKind
from approvals.audit.findings import audit_finding_list
from approvals.audit.models import AuditFinding
from approvals.audit.web.forms import FindingFilterForm
from ota_project.roles import FINDING_READER_ROLES
from ota_project.web.access import role_required
from workflows.types import AUDIT_EVERY_SECONDS, EXPIRY_AUDIT_EVERY_SECONDS, EXPIRY_AUDIT_SCHEDULE_ID, audit_schedule_id

PAGE_SIZE = 50


def finding_url(finding: AuditFinding) -> str:
    """The page of what the finding is about: the device, the change; a device certificate's device ("" if none)."""
    if finding.subject_type == "device":
        return reverse("web-fleet:device", args=[finding.subject])
    if finding.subject_type == "change" and finding.subject.isdigit():
        return reverse("web-changes:detail", args=[int(finding.subject)])
    device = finding.evidence.get("device") if isinstance(finding.evidence, dict) else None
    if finding.subject_type == "device_certificate" and isinstance(device, str) and device:
        return reverse("web-fleet:device", args=[device])
    return ""


def finding_rollout_url(finding: AuditFinding) -> str:
    """The rollout a finding's evidence names (a telemetry gap: the rollout that updated the device), or ""."""
    rollout = finding.evidence.get("rollout") if isinstance(finding.evidence, dict) else None
    return reverse("web-rollouts:detail", args=[rollout]) if isinstance(rollout, int) and rollout > 0 else ""


@dataclass(frozen=True)
class FindingRow:
    finding: AuditFinding
    url: str
    rollout_url: str


@dataclass(frozen=True)
class AuditSchedule:
    kind: str
    label: str
    schedule_id: str
    every_minutes: int
    open: int


@require_GET
@role_required(*sorted(FINDING_READER_ROLES))
def findings(request: HttpRequest) -> HttpResponse:
    """Open (or resolved) findings of the recurring audits, most severe first, 50 a page; bad filters: 400."""
    form = FindingFilterForm(request.GET or None)
    context: dict[str, Any] = {"form": form, "page": None, "rows": []}
    counts = dict(
        AuditFinding.objects.filter(resolved_at__isnull=True)
        .order_by()
        .values_list("kind")
        .annotate(n=Count("id"))
        .values_list("kind", "n")
    )
    schedules = {kind: (audit_schedule_id(kind), every) for kind, every in AUDIT_EVERY_SECONDS.items()}
    schedules[AuditKind.SIGNING_EXPIRY] = (EXPIRY_AUDIT_SCHEDULE_ID, EXPIRY_AUDIT_EVERY_SECONDS)
    context["audits"] = [
        AuditSchedule(kind, str(label), schedules[kind][0], schedules[kind][1] // 60, counts.get(kind, 0))
        for kind, label in AuditKind.choices
    ]
    if form.is_bound and not form.is_valid():
        return render(request, "approvals/audit/findings.html", context, status=400)
    data = form.cleaned_data if form.is_bound else {"kind": "", "severity": "", "state": "open"}
    listed = audit_finding_list(
        kind=data.get("kind") or "", severity=data.get("severity") or "", include_resolved=data["state"] != "open"
    )
    if data["state"] == "resolved":
        listed = listed.filter(resolved_at__isnull=False)
    page = Paginator(listed, PAGE_SIZE).get_page(request.GET.get("page"))
    context.update(
        page=page,
        rows=[FindingRow(finding, finding_url(finding), finding_rollout_url(finding)) for finding in page.object_list],
        filtered=any(data.get(name) for name in ("kind", "severity")) or data["state"] != "open",
        state=data["state"],
    )
    return render(request, "approvals/audit/findings.html", context)
