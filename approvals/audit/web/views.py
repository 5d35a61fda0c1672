"""Audit pages: the decision record with filters, one record, on-demand chain verification, export links, and the
security events (refusals counted per kind, with the latest rows).

Exports are downloaded from the API endpoint itself (/api/v1/audit/export/, approvals.audit.api.views.AuditExportView):
the page only builds its links from the validated filters, so there is one export code path and one record of it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_POST

from approvals.audit.api.filters import SecurityEventFilter
from approvals.audit.api.views import AUDIT_READ_ROLES
from approvals.audit.choices import SecurityEventKind
from approvals.audit.export import EXPORT_FORMATS
from approvals.audit.models import DecisionRecord
from approvals.audit.security_selectors import security_event_list, security_event_summary
from approvals.audit.web import selectors as audit_selectors
from approvals.audit.web.forms import RecordFilterForm
from devices.firmware.repository.selectors import expiry_alert_open_list
from ota_project.web.access import HtmxHttpRequest, role_required

PAGE_SIZE = 50
CHAIN_STATUS_SESSION_KEY = "audit_chain_status"


def _iso_utc(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def export_links(*, since: datetime | None, until: datetime | None) -> list[dict[str, str]]:
    """The download links of the API's export endpoint for this date range, one per records format."""
    links = []
    for fmt in EXPORT_FORMATS:
        params = {"format": fmt}
        if since is not None:
            params["since"] = _iso_utc(since)
        if until is not None:
            params["until"] = _iso_utc(until)
        links.append(
            {
                "format": fmt,
                "label": f"Download {fmt.upper()}",
                "url": f"{reverse('api:audit-export')}?{urlencode(params)}",
            }
        )
    return links


def record_object_url(record: DecisionRecord) -> str:
    """The page of the object a record is about, when there is one ("" otherwise)."""
    object_id = record.object_id
    if record.object_type == "change" and object_id.isdigit():
        return reverse("web-trace:change-trace", args=[int(object_id)])
    if (
        record.object_type == "approval"
        and isinstance(record.after, dict)
        and isinstance(record.after.get("change"), int)
    ):
        return reverse("web-trace:change-trace", args=[record.after["change"]])
    if record.object_type == "device" and object_id:
        return reverse("web-fleet:device", args=[object_id])
    if record.object_type == "rollout" and object_id.isdigit():
        return reverse("web-rollouts:detail", args=[int(object_id)])
    return ""


def _chain_status(request: HttpRequest) -> audit_selectors.ChainStatus | None:
    return audit_selectors.ChainStatus.from_session(request.session.get(CHAIN_STATUS_SESSION_KEY))


@require_GET
@role_required(*AUDIT_READ_ROLES)
def records(request: HttpRequest) -> HttpResponse:
    """The decision record, filtered and paginated, with the chain status, exports and the vehicle search."""
    form = RecordFilterForm(request.GET or None)
    page = None
    since = until = None
    if not form.is_bound or form.is_valid():
        filters = form.selector_filters() if form.is_bound else {}
        since, until = filters.get("since"), filters.get("until")
        page = Paginator(audit_selectors.audit_record_list(**filters), PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [{"record": record, "object_url": record_object_url(record)} for record in page.object_list] if page else []
    context: dict[str, Any] = {
        "form": form,
        "page": page,
        "rows": rows,
        "filtered": form.is_bound and form.is_valid() and any(form.selector_filters().values()),
        "record_filters": form.is_bound and form.is_valid() and form.has_record_filters(),
        "exports": export_links(since=since, until=until) if page is not None else [],
        "export_since": since,
        "export_until": until,
        "chain": _chain_status(request),
    }
    return render(request, "approvals/audit/records.html", context)


@require_GET
@role_required(*AUDIT_READ_ROLES)
def record_detail(request: HttpRequest, seq: int) -> HttpResponse:
    """One decision record: every hashed field, its hash, its link to the record before, and a content check."""
    record = audit_selectors.audit_record_get(seq=seq)
    previous, following = audit_selectors.audit_record_neighbours(record)
    context = {
        "record": record,
        "object_url": record_object_url(record),
        "previous_seq": previous,
        "next_seq": following,
        "hash_matches": audit_selectors.audit_record_hash_matches(record),
        "before_json": json.dumps(record.before, indent=2, sort_keys=True, ensure_ascii=False),
        "after_json": json.dumps(record.after, indent=2, sort_keys=True, ensure_ascii=False),
    }
    return render(request, "approvals/audit/record_detail.html", context)


@require_POST
@role_required(*AUDIT_READ_ROLES)
def verify_chain(request: HtmxHttpRequest) -> HttpResponse:
    """Walk the chain now; htmx gets the status fragment, a plain form post is redirected back (PRG)."""
    status = audit_selectors.audit_chain_status()
    request.session[CHAIN_STATUS_SESSION_KEY] = status.as_session()
    if request.htmx:
        return render(request, "approvals/audit/_chain_status.html", {"chain": status})
    target = request.POST.get("next", "")
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return HttpResponseRedirect(target)
    return redirect(reverse("web-audit:records") + "#chain-heading")


@require_GET
@role_required(*AUDIT_READ_ROLES)
def security(request: HttpRequest) -> HttpResponse:
    """Security events: refusals per kind over 24 hours and 7 days, the latest rows (optionally of one kind), and the
    expiry audit's open alerts (keys and metadata close to expiry, or trusted when they must not be)."""
    filters = SecurityEventFilter(request.GET, queryset=security_event_list())
    page = Paginator(filters.qs, PAGE_SIZE).get_page(request.GET.get("page")) if filters.is_valid() else None
    kinds = filters.form.cleaned_data.get("kind") if filters.is_valid() else None
    context: dict[str, Any] = {
        "summary": security_event_summary(),
        "page": page,
        "events": list(page.object_list) if page else [],
        "kind_labels": [str(SecurityEventKind(kind).label) for kind in kinds or ()],
        "filtered": bool(page is not None and any(filters.form.cleaned_data.values())),
        "expiry_alerts": list(expiry_alert_open_list()[:PAGE_SIZE]),
    }
    return render(request, "approvals/audit/security.html", context)
