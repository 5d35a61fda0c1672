"""Alert pages (namespace web-alerts): the live alerts with links to the rollout and the evidence, one alert's page,
and a person's acknowledgement or resolution through the same service as the API (`rollouts.alert_services`)."""

from __future__ import annotations

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from ota_project.alerts import selectors
from ota_project.alerts.choices import ALERT_ACK_ROLES, ALERT_READ_ROLES, AlertStatus
from ota_project.alerts.models import AlertDelivery
from ota_project.errors import DomainError
from ota_project.roles import acting_user, has_role
from ota_project.web.access import role_required
from rollouts import alert_services

PAGE_SIZE = 25
SHOWN = {"live": "", "resolved": AlertStatus.RESOLVED}


class AlertNoteForm(forms.Form):
    """The note a person leaves with an acknowledgement (optional) or a resolution (required, checked by the service)."""

    note = forms.CharField(required=False, max_length=alert_services.MAX_NOTE_CHARS)


@require_GET
@role_required(*ALERT_READ_ROLES)
def alert_list(request: HttpRequest) -> HttpResponse:
    """Live alerts (open first in the count, newest activity first), or the resolved ones."""
    shown = request.GET.get("show", "live")
    if shown not in SHOWN:
        shown = "live"
    page = Paginator(selectors.alert_list(status=SHOWN[shown]), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "alerts/list.html",
        {"page": page, "shown": shown, "can_act": has_role(request.user, *ALERT_ACK_ROLES)},
    )


@require_GET
@role_required(*ALERT_READ_ROLES)
def alert_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """One alert: summary, link, evidence, occurrences, who acknowledged or resolved it, webhook deliveries."""
    alert = selectors.alert_get(pk)
    if alert is None:
        raise Http404("No such alert.")
    deliveries = AlertDelivery.objects.filter(alert=alert).order_by("-notification")[:10]
    return render(
        request,
        "alerts/detail.html",
        {
            "alert": alert,
            "evidence": sorted(alert.evidence.items()),
            "deliveries": deliveries,
            "can_act": has_role(request.user, *ALERT_ACK_ROLES),
        },
    )


def _act(request: HttpRequest, pk: int, verb: str) -> HttpResponse:
    form = AlertNoteForm(request.POST)
    if not form.is_valid():
        for errors in form.errors.values():
            for error in errors:
                messages.error(request, f"Alert {pk} was not {verb}d: {error}")
        return redirect("web-alerts:detail", pk=pk)
    service = alert_services.alert_acknowledge if verb == "acknowledge" else alert_services.alert_resolve
    try:
        alert = service(actor=acting_user(request), alert_id=pk, note=form.cleaned_data["note"])
    except DomainError as exc:
        if exc.code == "not_found":
            raise Http404("No such alert.") from exc
        messages.error(request, f"Alert {pk} was not {verb}d: {exc.message}")
        return redirect("web-alerts:detail", pk=pk)
    messages.success(request, f"Alert {pk} is {alert.get_status_display().lower()}; this is recorded with your name.")
    return redirect("web-alerts:detail", pk=pk)


@require_POST
@role_required(*ALERT_ACK_ROLES)
def alert_acknowledge(request: HttpRequest, pk: int) -> HttpResponse:
    """Acknowledge an alert (operators, security officers)."""
    return _act(request, pk, "acknowledge")


@require_POST
@role_required(*ALERT_ACK_ROLES)
def alert_resolve(request: HttpRequest, pk: int) -> HttpResponse:
    """Resolve an alert with a note (operators, security officers)."""
    return _act(request, pk, "resolve")
