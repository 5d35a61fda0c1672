"""Trace pages: one change end to end (request, risk, approvals, waves, per-device outcomes) and the software
register of one vehicle. Read-only; every role that may read changes and deployments in the API may read these."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET

from approvals.audit.web import trace_selectors
from approvals.audit.web.trace_forms import DeploymentFilterForm, VehicleSearchForm
from approvals.selectors import change_get_for_user
from devices import selectors as device_selectors
from ota_project.roles import Role, acting_user, has_role
from ota_project.web.access import role_required

# Any role reads changes and deployments in the API (ota_project.permissions.HasAnyRole); the pages mirror it.
READ_ROLES = tuple(Role.values)
# Decision records themselves open only for these roles (approvals.audit.api.views.AUDIT_READ_ROLES).
AUDIT_ROLES = (Role.AUDITOR, Role.SECURITY_OFFICER)
OUTCOME_PAGE_SIZE = 50
LOOKUP_CANDIDATES = 20


@require_GET
@role_required(*READ_ROLES)
def change_trace(request: HttpRequest, pk: int) -> HttpResponse:
    """The end-to-end trace of one change, in time order, each step with its decision record."""
    change = change_get_for_user(acting_user(request), pk)
    trace = trace_selectors.change_trace(change)
    outcomes = None
    form = None
    if trace.rollout is not None:
        form = DeploymentFilterForm(request.GET or None, waves=[(w.wave.index, w.wave.name) for w in trace.waves])
        if not form.is_bound or form.is_valid():
            filters = form.selector_filters() if form.is_bound else {}
            deployments = trace_selectors.rollout_deployment_list(trace.rollout, **filters)
            outcomes = Paginator(deployments, OUTCOME_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "trace": trace,
        "change": change,
        "form": form,
        "outcomes": outcomes,
        "outcomes_filtered": bool(form and form.is_bound and form.is_valid() and any(form.selector_filters().values())),
        "can_audit": has_role(request.user, *AUDIT_ROLES),
    }
    return render(request, "rollouts/trace/change_trace.html", context)


@require_GET
@role_required(*READ_ROLES)
def vehicle_register(request: HttpRequest, serial: str) -> HttpResponse:
    """The software register of one device: versions before and after every deployment, check-ins, rollbacks."""
    device = device_selectors.device_get(serial_or_id=serial)
    context = {
        "register": trace_selectors.vehicle_register(device),
        "device": device,
        "can_audit": has_role(request.user, *AUDIT_ROLES),
    }
    return render(request, "rollouts/trace/vehicle_register.html", context)


@require_GET
@role_required(*READ_ROLES)
def vehicle_lookup(request: HttpRequest) -> HttpResponse:
    """Jump to a vehicle's register by serial or VIN; when several devices match, list them."""
    form = VehicleSearchForm(request.GET or None)
    candidates: list = []
    if form.is_bound and form.is_valid():
        query = form.cleaned_data["serial"]
        matches = list(device_selectors.device_list(search=query)[: LOOKUP_CANDIDATES + 1])
        exact = [d for d in matches if d.serial == query or (d.vin or "") == query.upper()]
        if len(exact) == 1 or len(matches) == 1:
            return redirect("web-trace:vehicle-register", serial=(exact or matches)[0].serial)
        candidates = matches[:LOOKUP_CANDIDATES]
    context = {
        "form": form,
        "candidates": candidates,
        "more": len(candidates) == LOOKUP_CANDIDATES,
        "searched": form.is_bound and form.is_valid(),
    }
    return render(request, "rollouts/trace/vehicle_lookup.html", context)
