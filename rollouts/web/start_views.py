"""The start page: what starting an approved change's rollout does, and the operator's confirmation."""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from approvals.models import ChangeRequest
from approvals.plan_warnings import change_plan_warnings
from approvals.selectors import change_get_for_user, change_start_refusal
from ota_project.errors import DomainError
from ota_project.roles import Role, acting_user
from ota_project.web.access import role_required
from rollouts import rollout_services
from rollouts.models import Rollout
from rollouts.web import page_selectors
from rollouts.web.forms import ChangeChoiceForm, StartRolloutForm


def _render(
    request: HttpRequest,
    change: ChangeRequest,
    form: StartRolloutForm,
    *,
    error: str = "",
    status: int = 200,
) -> HttpResponse:
    preview = page_selectors.rollout_start_preview(change, acting_user(request))
    context: dict[str, Any] = {"change": change, "preview": preview, "form": form, "error": error}
    return render(request, "rollouts/start.html", context, status=status)


def _choose(request: HttpRequest, form: ChangeChoiceForm, status: int = 200) -> HttpResponse:
    ready = page_selectors.changes_ready_to_start(acting_user(request))
    return render(request, "rollouts/start_choose.html", {"form": form, "ready": ready}, status=status)


@require_http_methods(["GET", "POST"])
@role_required(*Role.values)
def rollout_start(request: HttpRequest) -> HttpResponse:
    """GET ?change=<pk>: the change's release, scope and waves with a confirm form; POST: rollout_start."""
    if request.method == "GET":
        if "change" not in request.GET:
            return _choose(request, ChangeChoiceForm())
        choice = ChangeChoiceForm(request.GET)
        if not choice.is_valid():
            return _choose(request, choice, status=400)
        change = change_get_for_user(acting_user(request), choice.cleaned_data["change"])
        form = StartRolloutForm(initial={"change": change.pk}, warnings=change_plan_warnings(change))
        return _render(request, change, form)
    choice = ChangeChoiceForm(request.POST)
    if not choice.is_valid():
        return _choose(request, choice, status=400)
    change = change_get_for_user(acting_user(request), choice.cleaned_data["change"])
    # The warnings as they stand now: one that appeared since the page was read must be acknowledged too.
    form = StartRolloutForm(request.POST, warnings=change_plan_warnings(change))
    # Who may start and when, and what blocks any start (no rollback, an overlap), are said first (the service
    # refuses them and records the attempt); the form's own checks (the confirmation, each warning acknowledged)
    # come after.
    refused = change_start_refusal(acting_user(request), change) is not None or bool(
        rollout_services.rollout_start_blockers(change)
    )
    if not refused and not form.is_valid():
        return _render(request, change, form, status=400)
    try:
        rollout = rollout_services.rollout_start(
            actor=acting_user(request),
            change=change,
            acknowledged_warnings=None if refused else form.cleaned_data["acknowledge"],
        )
    except DomainError as refused:
        started = Rollout.objects.filter(change=change).first()
        if started is not None:
            # The rollout was recorded, then starting its workflow failed (Temporal did not answer); the service's
            # message says so and that the worker starts it once Temporal is reachable.
            messages.error(request, refused.message)
            return redirect("web-rollouts:detail", pk=started.pk)
        return _render(request, change, form, error=refused.message, status=refused.status_code)
    messages.success(request, f"Rollout {rollout.pk} started: its workflow now runs the first wave.")
    return redirect("web-rollouts:detail", pk=rollout.pk)
