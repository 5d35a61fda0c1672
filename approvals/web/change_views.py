"""Change request pages: the CAB queue, the change page with its actions, and the requester's forms.

Views are thin: a form checks shape, one service acts (the same one the API calls), and a refusal from the
service is shown on the page with the HTTP status the API would give, never a 500 and never a partial write.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from django import forms
from django.contrib import messages
from django.core.paginator import Paginator
from django.forms import Form
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from approvals import services
from approvals.choices import ApprovalDecision, ChangeStatus
from approvals.models import ChangeRequest
from approvals.plan_warnings import plan_warnings
from approvals.plans import default_plan, plan_parse
from approvals.risk import risk_answers_validate, risk_assess, risk_questionnaire
from approvals.selectors import (
    change_create_refusal,
    change_edit_refusal,
    change_get_for_user,
    change_plan_hash,
    plan_wave_preview,
)
from approvals.web import change_forms as f
from approvals.web.change_selectors import change_page, queue_changes, queue_rows
from devices.scope import TargetScope, scope_parse, scope_summary
from ota_project.errors import DomainError, InvalidInput, NotPermitted
from ota_project.roles import APPROVER_ROLES, CHANGE_READER_ROLES, Role, acting_user, has_role
from ota_project.web.access import forbidden, role_required
from ota_project.web.forms import form_field
from ota_project.web.text import describe_duration
from ota_project.web.zones import shown_time, utc_time

ANY_ROLE = tuple(Role.values)
QUEUE_ROLES = (*sorted(APPROVER_ROLES), *sorted(CHANGE_READER_ROLES), Role.REQUESTER)
PAGE_SIZE = 25
DECISION_SERVICES: dict[str, Callable[..., ChangeRequest]] = {
    ApprovalDecision.APPROVED: services.approval_grant,
    ApprovalDecision.REJECTED: services.approval_reject,
    ApprovalDecision.CHANGES_REQUESTED: services.approval_request_changes,
}
DECISION_DONE = {
    ApprovalDecision.APPROVED: "You approved revision {revision}.",
    ApprovalDecision.REJECTED: "You rejected the change.",
    ApprovalDecision.CHANGES_REQUESTED: "You sent the change back to its author.",
}


def _shown_with_utc(value: datetime | None) -> str:
    """A time in a message: on the viewer's clock, then in UTC ("2026-12-06 10:00 CET, 09:00 UTC")."""
    return "" if value is None else f"{shown_time(value)} ({utc_time(value)})"


# The change page's one-field forms, each running one service on the change: form prefix ->
# (form, service, the field passed on to it, the message on success formatted with the service's `result`).
FORM_ACTIONS: dict[str, tuple[type[Form], Callable[..., ChangeRequest], str, str]] = {
    "cancel": (f.ReasonForm, services.change_cancel, "reason", "The change is cancelled."),
    "schedule": (
        f.ScheduleForm,
        services.change_schedule,
        "start",
        "Scheduled to start at {start}.",
    ),
    "retrospective": (
        f.CommentForm,
        services.change_retrospective_complete,
        "comment",
        "The retrospective review is recorded.",
    ),
    "post_review": (
        f.CommentForm,
        services.change_post_implementation_review,
        "comment",
        "The post-implementation review is recorded.",
    ),
}


def _detail_url(change: ChangeRequest) -> str:
    return reverse("web-changes:detail", args=[change.pk])


# ---- CAB queue ---------------------------------------------------------------------------------------------


@require_GET
@role_required(*QUEUE_ROLES)
def queue(request: HttpRequest) -> HttpResponse:
    """Pending change requests, riskiest and soonest first, with policy progress; filters for mine/status/type/risk.
    Readers (auditors, operators) see every change in any status."""
    reviewer = has_role(request.user, *APPROVER_ROLES)
    reader = not reviewer and has_role(request.user, *CHANGE_READER_ROLES)
    filters = f.QueueFilterForm(request.GET or None)
    values = filters.cleaned_data if filters.is_valid() else {}
    mine = bool(values.get("mine")) or not (reviewer or reader)
    if mine or reader:
        form_field(filters, "status", forms.ChoiceField).choices = [("", "Any status"), *ChangeStatus.choices]
    changes = queue_changes(
        acting_user(request),
        mine=mine,
        status=values.get("status", ""),
        change_type=values.get("change_type", ""),
        risk_level=values.get("risk_level", ""),
        search=values.get("q", ""),
    )
    page = Paginator(changes, PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "filters": filters,
        "page": page,
        "rows": queue_rows(list(page.object_list)),
        "reviewer": reviewer,
        "reader": reader,
        "may_file": has_role(request.user, Role.REQUESTER),
        "mine": mine,
        "may_create": change_create_refusal(acting_user(request)) is None,
        "filtered": any(values.get(k) for k in ("q", "mine", "status", "change_type", "risk_level")),
    }
    return render(request, "approvals/changes/queue.html", context)


# ---- Change page and its actions ---------------------------------------------------------------------------


def _suggested_start(change: ChangeRequest) -> datetime:
    """The schedule form's suggestion: the current scheduled start, else two minutes from now (whole minutes)
    when that falls inside the requested window, else the window's start."""
    if change.status == ChangeStatus.SCHEDULED and change.scheduled_start is not None:
        return change.scheduled_start
    soon = (timezone.now() + timedelta(minutes=3)).replace(second=0, microsecond=0)
    if change.requested_window_start <= soon < change.requested_window_end:
        return soon
    return change.requested_window_start


def _render_detail(
    request: HttpRequest,
    change: ChangeRequest,
    *,
    status: int = 200,
    error: str = "",
    error_fields: dict[str, Any] | None = None,
    **forms: Any,
) -> HttpResponse:
    page = change_page(acting_user(request), change)
    defaults = {
        **{f"{prefix}_form": form_class(prefix=prefix) for prefix, (form_class, *_) in FORM_ACTIONS.items()},
        "decision_form": f.DecisionForm(initial={"revision": change.revision}),
        "schedule_form": f.ScheduleForm(prefix="schedule", initial={"start": _suggested_start(change)}),
        "evidence_form": f.EvidenceForm(),
    }
    defaults.update(forms)
    plan = change.plan if page.waves else None  # no waves shown: no plan, or one that does not parse
    context = {
        "change": change,
        "page": page,
        "wave_rows": [(f"{w.index + 1}. {w.name}", w.devices) for w in page.waves],
        "plan_waves": [
            {
                "preview": w,
                "plan": wave,
                "soak": describe_duration(timedelta(seconds=wave.soak_seconds)) if wave.soak_seconds else "none",
            }
            for w, wave in zip(page.waves, plan.waves if plan else (), strict=True)
        ],
        "plan_gates": plan.gates if plan else (),
        "plan_hash": change_plan_hash(change),
        "plan_json": json.dumps(change.rollout_plan, indent=2, sort_keys=True),
        "error": error,
        "error_lines": f.error_lines(error_fields or {}),
        **defaults,
    }
    return render(request, "approvals/changes/detail.html", context, status=status)


@require_GET
@role_required(*ANY_ROLE)
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    """Everything a reviewer needs to decide, and the actions the viewer may take (or why not)."""
    return _render_detail(request, change_get_for_user(acting_user(request), pk))


def _act(
    request: HttpRequest,
    change: ChangeRequest,
    form_name: str,
    form: Any,
    action: Callable[[dict[str, Any]], Any],
    done: Callable[[Any], str],
) -> HttpResponse:
    """Run one service for a posted form: success -> message and redirect; refusal -> the page with the error."""
    if not form.is_valid():
        return _render_detail(request, change, status=400, **{form_name: form})
    try:
        result = action(form.cleaned_data)
    except DomainError as exc:
        for name, problems in exc.fields.items():
            if name in form.fields:
                form.add_error(name, f.error_lines(problems))
        return _render_detail(
            request, change, status=exc.status_code, error=exc.message, error_fields=exc.fields, **{form_name: form}
        )
    messages.success(request, done(result))
    return redirect(_detail_url(change))


@require_POST
@role_required(*ANY_ROLE)
def decide(request: HttpRequest, pk: int) -> HttpResponse:
    """Approve, reject or request changes on the revision the reviewer read (approval_grant & co.)."""
    change = change_get_for_user(acting_user(request), pk)
    form = f.DecisionForm(request.POST)

    def action(data: dict[str, Any]) -> ChangeRequest:
        service = DECISION_SERVICES[data["decision"]]
        return service(actor=acting_user(request), change=change, revision=data["revision"], comment=data["comment"])

    def done(result: ChangeRequest) -> str:
        text = DECISION_DONE[form.cleaned_data["decision"]].format(revision=form.cleaned_data["revision"])
        if result.status == ChangeStatus.APPROVED:
            text += " The policy is satisfied: the change is approved."
        return text

    return _act(request, change, "decision_form", form, action, done)


@require_POST
@role_required(Role.REQUESTER)
def submit(request: HttpRequest, pk: int) -> HttpResponse:
    """Send a draft (or a change sent back) to the CAB; readiness problems are listed on the page."""
    change = change_get_for_user(acting_user(request), pk)
    try:
        services.change_submit(actor=acting_user(request), change=change)
    except DomainError as exc:
        change.refresh_from_db()
        return _render_detail(request, change, status=exc.status_code, error=exc.message, error_fields=exc.fields)
    messages.success(request, "Submitted for review. The CAB queue shows it now.")
    return redirect(_detail_url(change))


def _form_action(request: HttpRequest, pk: int, prefix: str) -> HttpResponse:
    """Run the FORM_ACTIONS service named by `prefix` with the posted form's one field, through `_act`."""
    form_class, service, field_name, done = FORM_ACTIONS[prefix]
    change = change_get_for_user(acting_user(request), pk)
    return _act(
        request,
        change,
        f"{prefix}_form",
        form_class(request.POST, prefix=prefix),
        lambda data: service(actor=acting_user(request), change=change, **{field_name: data[field_name]}),
        lambda result: done.format(result=result, start=_shown_with_utc(result.scheduled_start)),
    )


@require_POST
@role_required(Role.REQUESTER, Role.CAB_MEMBER)
def cancel(request: HttpRequest, pk: int) -> HttpResponse:
    """Withdraw a change with a reason (change_cancel)."""
    return _form_action(request, pk, "cancel")


@require_POST
@role_required(Role.OPERATOR)
def schedule(request: HttpRequest, pk: int) -> HttpResponse:
    """Schedule an approved change inside its requested window (change_schedule)."""
    return _form_action(request, pk, "schedule")


@require_POST
@role_required(Role.CAB_MEMBER, Role.SECURITY_OFFICER)
def retrospective(request: HttpRequest, pk: int) -> HttpResponse:
    """Record the retrospective review an approved emergency change owes (change_retrospective_complete)."""
    return _form_action(request, pk, "retrospective")


@require_POST
@role_required(Role.CAB_MEMBER, Role.SECURITY_OFFICER)
def post_review(request: HttpRequest, pk: int) -> HttpResponse:
    """Record the post-implementation review of a finished change (change_post_implementation_review)."""
    return _form_action(request, pk, "post_review")


@require_POST
@role_required(Role.REQUESTER)
def evidence_upload(request: HttpRequest, pk: int) -> HttpResponse:
    """Attach a test evidence file (evidence_add); after submission this bumps the revision."""
    change = change_get_for_user(acting_user(request), pk)
    revision = change.revision
    return _act(
        request,
        change,
        "evidence_form",
        f.EvidenceForm(request.POST, request.FILES),
        lambda data: services.evidence_add(actor=acting_user(request), change=change, upload=data["file"]),
        lambda evidence: (
            f"Attached {evidence.file_name}."
            + (
                f" The change is now at revision {evidence.revision}; earlier approvals are void."
                if evidence.revision != revision
                else ""
            )
        ),
    )


# ---- Requester forms ---------------------------------------------------------------------------------------


def _bound(request: HttpRequest) -> tuple[f.ChangeForm, f.BaseWaveFormSet]:
    return f.ChangeForm(request.POST), f.WaveFormSet(request.POST, prefix="waves")


NEW_WAVE = {
    "cohort_kind": "percent",
    "cohort_value": "25",
    "soak_seconds": "3600",
    "min_sample": "10",
    "success_threshold": "0.97",
    "failure_threshold": "0.03",
    "promotion": "auto",
}


def _with_added_wave(request: HttpRequest) -> f.BaseWaveFormSet:
    """The posted waves plus a new one before the last (the last wave always takes the rest)."""
    data = request.POST.copy()
    try:
        total = int(data.get("waves-TOTAL_FORMS", "0") or 0)
    except ValueError:
        total = -1
    if not 0 <= total < f.MAX_WAVE_FORMS:
        messages.warning(request, f"A rollout plan has at most {f.MAX_WAVE_FORMS} waves.")
        return f.WaveFormSet(request.POST, prefix="waves")
    data["waves-TOTAL_FORMS"] = str(total + 1)
    slot = max(total - 1, 0)
    names = [*f.WaveForm.base_fields, "DELETE"]
    if total:
        # Move the last wave one place down so that the new wave goes before it.
        for name in names:
            if f"waves-{slot}-{name}" in data:
                data.setlist(f"waves-{total}-{name}", data.pop(f"waves-{slot}-{name}"))
    data[f"waves-{slot}-name"] = f"wave-{slot + 1}"
    for name, value in NEW_WAVE.items():
        data[f"waves-{slot}-{name}"] = value
    return f.WaveFormSet(data, prefix="waves")


def _render_form(
    request: HttpRequest,
    form: f.ChangeForm,
    waves: f.BaseWaveFormSet,
    *,
    change: ChangeRequest | None = None,
    status: int = 200,
) -> HttpResponse:
    context = {
        "form": form,
        "waves": waves,
        "change": change,
        "approvals_to_void": change.approvals.filter(voided_at__isnull=True).count() if change else 0,
        "bumps_revision": change is not None and change.status != ChangeStatus.DRAFT,
        "preview": _preview(form, waves, change),
    }
    return render(request, "approvals/changes/form.html", context, status=status)


def _save(
    request: HttpRequest,
    save: Callable[[dict[str, Any]], ChangeRequest],
    *,
    change: ChangeRequest | None,
) -> HttpResponse | ChangeRequest:
    """Check the form's shape and run the service; an edit sends only the fields whose value the requester changed."""
    form, waves = _bound(request)
    if "add_wave" in request.POST:
        return _render_form(request, form, _with_added_wave(request), change=change)
    form_ok, waves_ok = form.is_valid(), waves.is_valid()
    if not (form_ok and waves_ok):
        return _render_form(request, form, waves, change=change, status=400)
    fields = form.service_fields(waves.waves())
    try:
        return save(fields if change is None else form.edited_fields(fields, change))
    except DomainError as exc:
        f.add_service_errors(form, exc, waves.kept_forms())
        if exc.fields:
            messages.error(request, exc.message)
        return _render_form(request, form, waves, change=change, status=exc.status_code)


@require_http_methods(["GET", "POST"])
@role_required(Role.REQUESTER)
def create(request: HttpRequest) -> HttpResponse:
    """File a new change request as a draft (change_create)."""
    if request.method == "GET":
        values, waves = f.initial_values(None)
        return _render_form(request, f.ChangeForm(initial=values), f.WaveFormSet(initial=waves, prefix="waves"))
    result = _save(request, lambda fields: services.change_create(actor=acting_user(request), **fields), change=None)
    if isinstance(result, HttpResponse):
        return result
    messages.success(
        request, f"Draft CR-{result.pk} saved. Attach test evidence if you have any, then submit it for review."
    )
    return redirect(_detail_url(result))


@require_http_methods(["GET", "POST"])
@role_required(Role.REQUESTER)
def edit(request: HttpRequest, pk: int) -> HttpResponse:
    """Edit a change (change_update); after submission this bumps the revision and voids the approvals."""
    change = change_get_for_user(acting_user(request), pk)
    refusal = change_edit_refusal(acting_user(request), change)
    if isinstance(refusal, NotPermitted):
        return forbidden(request, (Role.REQUESTER,), message=refusal.message)
    if refusal is not None:
        messages.error(request, refusal.message)
        return redirect(_detail_url(change))
    if request.method == "GET":
        values, waves = f.initial_values(change)
        return _render_form(
            request, f.ChangeForm(initial=values), f.WaveFormSet(initial=waves, prefix="waves"), change=change
        )
    revision = change.revision

    result = _save(
        request,
        lambda fields: services.change_update(actor=acting_user(request), change=change, **fields),
        change=change,
    )
    if isinstance(result, HttpResponse):
        return result
    if result.revision != revision:
        messages.success(
            request, f"Saved as revision {result.revision}. Earlier approvals are void; the CAB reviews it again."
        )
    elif result.updated_at != change.updated_at:
        messages.success(request, "Changes saved.")
    else:
        messages.info(request, "Nothing changed.")
    return redirect(_detail_url(result))


# ---- Live preview (htmx) -----------------------------------------------------------------------------------


def _preview(form: f.ChangeForm, waves: f.BaseWaveFormSet, change: ChangeRequest | None = None) -> dict[str, Any]:
    """Scope size, risk level and devices per wave for what the form holds now; problems instead of numbers."""
    settings_errors: list[str] = []
    if form.is_bound:
        form.is_valid()
        waves.is_valid()
        scope, answers, plan = form.target_scope(), form.risk_answers(), form.rollout_plan(waves.waves())
        settings_errors = [str(error) for error in form.errors.get("plan_settings") or ()]
    elif change is None:
        scope, answers, plan = TargetScope(), {}, default_plan()
    else:  # the edit page shows the plan as the form does; no waves when the stored plan no longer parses
        scope, answers = change.scope, {k: v for k, v in change.risk_answers.items() if f"risk_{k}" in form.fields}
        plan = f.shown_plan(change) or replace(default_plan(), waves=())
    result: dict[str, Any] = {
        "scope": None,
        "scope_errors": [],
        "risk": None,
        "risk_errors": [],
        "waves": None,
        "plan_errors": [],
        "warnings": [],
        "gates": (),
    }
    checked_scope = None
    if not scope.is_empty:
        try:
            checked_scope = scope_parse(scope)
            result["scope"] = scope_summary(checked_scope)
        except InvalidInput as exc:
            result["scope_errors"] = f.error_lines(exc.fields.get("target_scope", exc.message))
    else:
        result["scope_errors"] = ["Choose hardware models, regions, vehicle types, tags or devices."]
    try:
        checked_answers = risk_answers_validate(answers, risk_questionnaire())
        result["risk"] = risk_assess(answers=checked_answers, scope_summary=result["scope"] or {})
    except InvalidInput as exc:
        result["risk_errors"] = f.error_lines(exc.fields.get("risk_answers", exc.message))
    if settings_errors:
        result["plan_errors"] = settings_errors
    elif checked_scope is not None:
        try:
            parsed = plan_parse(plan)
            result["waves"] = plan_wave_preview(parsed, checked_scope)
            result["gates"] = parsed.gates
            window = form.cleaned_data if form.is_bound and hasattr(form, "cleaned_data") else {}
            result["warnings"] = plan_warnings(
                parsed,
                result["waves"],
                window_start=window.get("requested_window_start")
                if window
                else getattr(change, "requested_window_start", None),
                window_end=window.get("requested_window_end")
                if window
                else getattr(change, "requested_window_end", None),
                scope=checked_scope,
                exclude_change_id=getattr(change, "pk", None),
            )
        except InvalidInput as exc:
            result["plan_errors"] = f.error_lines(exc.fields.get("rollout_plan", exc.message))
    else:
        result["plan_errors"] = ["Devices per wave appear once the scope is valid."]
    return result


@require_POST
@role_required(Role.REQUESTER)
def preview(request: HttpRequest) -> HttpResponse:
    """htmx: the live scope count, risk level and devices per wave for the form as it stands (no writes)."""
    form, waves = _bound(request)
    return render(request, "approvals/changes/_preview.html", {"preview": _preview(form, waves)})
