"""Rollout pages for operators: the list, the live dashboard (htmx fragment) and the human actions.

Every action calls `rollout_services.rollout_act`, the same service the API calls; refusals (DomainError, from
the service or the workflow's validator) become an error message on the dashboard, never a 500.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.core.paginator import Paginator
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from ota_project.errors import DomainError
from ota_project.roles import Role, acting_user, has_role
from ota_project.web.access import role_required
from rollouts import rollout_services
from rollouts.choices import ROLLOUT_TERMINAL, DeploymentKind
from rollouts.models import Rollout
from rollouts.web import page_selectors
from rollouts.web.forms import RolloutActionForm
from workflows.policy import HUMAN_ACTIONS
from workflows.types import Update

# Anyone with a role reads rollouts (as in the API); only operators act (rollout_act checks again).
READ_ROLES = tuple(Role.values)
ACT_ROLES = (Role.OPERATOR,)
PAGE_SIZE = 25
POLL_SECONDS = 3
ACTION_LABELS: dict[str, str] = {name: label for name, label, *_ in page_selectors.ACTIONS}
# What an accepted action sets going (the workflow acts on it a moment later): the banner says this, never the
# phase the update was validated in, which is the state before the action.
ACCEPTED_NEXT: dict[str, str] = {
    Update.PAUSE: "no new wave starts and nothing is promoted until someone resumes",
    Update.RESUME: "the rollout continues where it was paused",
    Update.PROMOTE: "wave {wave} is promoted and the next wave starts",
    Update.ABORT: "the rollout stops; devices keep what they installed and the change is cancelled",
    Update.ROLLBACK: "every device that took the new release is being offered the old one",
}


def state_token(rollout: Rollout) -> str:
    """What decides which buttons are valid: when it changes, the live fragment also replaces the action panel."""
    return f"{rollout.status}:{rollout.gate}:{rollout.current_wave}"


@require_GET
@role_required(*READ_ROLES)
def rollout_list(request: HttpRequest) -> HttpResponse:
    """Every rollout, active ones first: status, change, release, current wave, progress and times."""
    page = Paginator(page_selectors.rollout_page_list(), PAGE_SIZE).get_page(request.GET.get("page"))
    return render(
        request,
        "rollouts/list.html",
        {"page": page, "can_start": has_role(request.user, Role.OPERATOR)},
    )


def _live_context(request: HttpRequest, rollout: Rollout) -> dict[str, Any]:
    waves = page_selectors.wave_views(rollout)
    failures = page_selectors.failure_breakdown(rollout)
    current = next((w for w in waves if w.is_current), None)
    return {
        "rollout": rollout,
        "terminal": rollout.status in ROLLOUT_TERMINAL,
        "state": state_token(rollout),
        "poll_seconds": POLL_SECONDS,
        "waves": waves,
        "current_wave": current,
        "waves_total": len(waves),
        "update_states": page_selectors.state_counts(rollout, DeploymentKind.UPDATE),
        "rollback_states": page_selectors.state_counts(rollout, DeploymentKind.ROLLBACK),
        "failures": failures,
        "set_aside": page_selectors.set_aside_breakdown(rollout),
        "breakers": page_selectors.tripped_breakers(rollout),
        "gate": page_selectors.gate_view(rollout, waves),
        "runbook": page_selectors.runbook_steps(rollout, waves, failures),
        "charts": page_selectors.health_charts(rollout, waves),
        "timeline": page_selectors.rollout_timeline(rollout),
        "live": page_selectors.rollout_live_status(rollout),
        "actions": page_selectors.rollout_actions_for(acting_user(request), rollout),
    }


@require_GET
@role_required(*READ_ROLES)
def rollout_detail(request: HttpRequest, pk: int) -> HttpResponse:
    """The live dashboard of one rollout (the #rollout-live fragment polls every 3 s until the rollout ends)."""
    rollout = page_selectors.rollout_page_get(pk)
    context = _live_context(request, rollout)
    if len(messages.get_messages(request)):
        # A banner about an action (or a refusal) is on the page: the first refresh replaces it with the state the
        # rollout is in by then, even when the page was already rendered in that state.
        context["poll_state"] = "banner"
    return render(request, "rollouts/dashboard.html", context)


@require_GET
@role_required(*READ_ROLES)
def rollout_live(request: HttpRequest, pk: int) -> HttpResponse:
    """The #rollout-live fragment; the action panel comes along (out of band) when the rollout's state changed."""
    rollout = page_selectors.rollout_page_get(pk)
    context = _live_context(request, rollout)
    context["actions_changed"] = request.GET.get("state") != context["state"]
    return render(request, "rollouts/_live_response.html", context)


@require_POST
@role_required(*ACT_ROLES)
def rollout_act(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    """Pause, resume, promote, abort or roll back, with a reason, through the same service as the API."""
    if action not in HUMAN_ACTIONS:
        raise Http404("No such action.")
    rollout = page_selectors.rollout_page_get(pk)
    label = ACTION_LABELS[action]
    form = RolloutActionForm(request.POST)
    if form.is_valid() and action == Update.PROMOTE and form.cleaned_data["wave_index"] is None:
        form.add_error("wave_index", "Promote names the wave that waits for promotion.")
    if not form.is_valid():
        problems = " ".join(str(error) for errors in form.errors.values() for error in errors)
        messages.error(request, f"{label} was not sent. {problems}")
        return redirect("web-rollouts:detail", pk=rollout.pk)
    wave_index = form.cleaned_data["wave_index"]
    try:
        rollout_services.rollout_act(
            actor=acting_user(request),
            rollout=rollout,
            action=action,
            reason=form.cleaned_data["reason"],
            wave_index=-1 if wave_index is None else wave_index,
        )
    except DomainError as refused:
        messages.error(request, f"{label} refused: {refused.message}")
    else:
        wave = (wave_index if wave_index is not None else rollout.current_wave) + 1
        messages.success(request, f"{label} accepted by the workflow: {ACCEPTED_NEXT[action].format(wave=wave)}.")
    return redirect("web-rollouts:detail", pk=rollout.pk)
