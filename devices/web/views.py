"""Fleet pages: the inventory (search, filters, version chart, drift, quarantine) and one device's page."""

from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme, urlencode
from django.views.decorators.http import require_GET, require_POST

from devices import selectors, services
from devices.choices import DeviceStatus
from devices.web import selectors as page_selectors
from devices.web.forms import InventoryFilterForm, ReasonForm
from ota_project.errors import DomainError
from ota_project.roles import Role, acting_user, has_role
from ota_project.web.access import role_required

# Every role may read the inventory, as in the API (ota_project.permissions.HasAnyRole: any role reads).
READ_ROLES = tuple(Role.values)
# Status actions are operators' work, as in the API (devices.api.views.InventoryViewSet.write_roles).
WRITE_ROLES = (Role.OPERATOR,)
AUDIT_ROLES = (Role.AUDITOR, Role.SECURITY_OFFICER)
PAGE_SIZE = 50


def _release_url(serial: str, *, back_to: str) -> str:
    """The release action's URL, returning to `back_to` afterwards."""
    return reverse("web-fleet:release", args=[serial]) + "?" + urlencode({"next": back_to})


def _permissions(request: HttpRequest) -> dict[str, bool]:
    return {
        "can_release": has_role(request.user, *WRITE_ROLES),
        "can_audit": has_role(request.user, *AUDIT_ROLES),
    }


@require_GET
@role_required(*READ_ROLES)
def inventory(request: HttpRequest) -> HttpResponse:
    """The fleet inventory: search and filters, a paginated table, version chart, drift and quarantined devices."""
    form = InventoryFilterForm(request.GET or None)
    page = None
    if form.is_bound and not form.is_valid():
        devices = None
    else:
        filters = form.selector_filters() if form.is_bound else {}
        devices = selectors.device_list(**filters)
        page = Paginator(devices, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "form": form,
        "page": page,
        "filtered": form.is_bound and form.is_valid() and bool(form.selector_filters()),
        "counts": page_selectors.fleet_counts(),
        "chart": page_selectors.version_chart(),
        "quarantined": [
            (device, _release_url(device.serial, back_to=request.get_full_path()))
            for device in page_selectors.quarantined_device_list()[: page_selectors.QUARANTINE_ROWS]
        ],
        "quarantine_rows": page_selectors.QUARANTINE_ROWS,
        **_permissions(request),
    }
    return render(request, "devices/inventory.html", context)


@require_GET
@role_required(*READ_ROLES)
def device_detail(request: HttpRequest, serial: str) -> HttpResponse:
    """One device: inventory fields, expected vs reported software, quarantine, telemetry and deployments."""
    device = selectors.device_get(serial_or_id=serial)
    context = {
        "device": device,
        "telemetry": page_selectors.device_recent_telemetry_summary(device),
        "telemetry_days": page_selectors.RECENT_TELEMETRY_DAYS,
        "recent_telemetry": page_selectors.device_recent_telemetry(device),
        "deployments": page_selectors.device_recent_deployments(device),
        "release_url": _release_url(device.serial, back_to=request.get_full_path()),
        **_permissions(request),
    }
    return render(request, "devices/device_detail.html", context)


def _back(request: HttpRequest, serial: str) -> HttpResponseRedirect:
    """Where to return after an action: the page the form came from (same site only), else the device page."""
    target = request.POST.get("next") or request.GET.get("next") or ""
    if target and url_has_allowed_host_and_scheme(target, {request.get_host()}, request.is_secure()):
        return HttpResponseRedirect(target)
    return redirect(reverse("web-fleet:device", args=[serial]))


@require_POST
@role_required(*WRITE_ROLES)
def device_release(request: HttpRequest, serial: str) -> HttpResponse:
    """Release a quarantined device (operator, reason required) through the same service as the API."""
    device = selectors.device_get(serial_or_id=serial)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"{device.serial} was not released: {error}")
        return _back(request, device.serial)
    was = device.status
    try:
        services.device_release_from_quarantine(
            actor=acting_user(request), device=device, reason=form.cleaned_data["reason"]
        )
    except DomainError as exc:
        messages.error(request, f"{device.serial} was not released: {exc.message}")
        return _back(request, device.serial)
    if was == DeviceStatus.ACTIVE:
        messages.info(request, f"{device.serial} is not quarantined; nothing changed.")
    else:
        messages.success(request, f"{device.serial} was released from quarantine and is active again.")
    return _back(request, device.serial)
