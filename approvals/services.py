"""Change request life cycle and approvals: every write and every separation-of-duties rule lives here.

Each service is one atomic action that names its actor and appends to the decision record in the same
transaction. Refusals raise before anything is written; permission refusals and decisions on a stale revision are
recorded as security events, which outlive the rolled-back transaction.
Services run in `atomic_with_retry`: called outside a transaction (from a view) a deadlock or serialization
failure re-runs the whole service, which re-reads everything it locks; inside a caller's transaction it runs once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth.models import User
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from approvals.audit.records import record_decision
from approvals.audit.security import SecurityEventKind, security_event
from approvals.choices import (
    CHANGE_TRANSITIONS,
    ApprovalDecision,
    ChangeStatus,
    ChangeType,
    risk_rank,
)
from approvals.models import Approval, ChangeRequest, TestEvidence
from approvals.notify import TIMER_ACTOR, alert_start_held, notify_people
from approvals.plans import plan_parse
from approvals.risk import RiskAssessment, risk_answers_validate, risk_assess, risk_questionnaire
from approvals.selectors import (
    change_approval_expires_at,
    change_cancel_refusal,
    change_create_refusal,
    change_edit_refusal,
    change_plan_hash,
    change_policy_progress,
    change_release_sha256,
    change_schedule_refusal,
    change_submit_refusal,
    decision_refusal,
    emergency_filing_refusal,
    evidence_add_refusal,
    freeze_refusal,
    policy_for,
    post_review_refusal,
    retrospective_refusal,
    window_frozen_refusal,
)
from devices.models import Region
from devices.scope import scope_devices, scope_parse, scope_summary
from ota_project.db import atomic_with_retry
from ota_project.errors import Conflict, DomainError, InvalidInput, NotPermitted
from ota_project.files import store_content_addressed, validate_file_name
from ota_project.roles import roles_of

EDITABLE_FIELDS = (
    "change_type",
    "template",
    "title",
    "justification",
    "release",
    "rollback_release",
    "target_scope",
    "impact_analysis",
    "test_evidence_summary",
    "requested_window_start",
    "requested_window_end",
    "rollout_plan",
    "emergency_reason",
    "risk_answers",
)


def _refuse(actor: User, change: ChangeRequest | None, message: str, *, service: str) -> NotPermitted:
    """Record a permission refusal as a security event and build the error to raise."""
    security_event(
        kind=SecurityEventKind.ACTION_UNAUTHORISED,
        source=f"approvals.{service}",
        message=message,
        actor=actor,
        subject=f"change:{change.pk}" if change is not None else "",
    )
    return NotPermitted(message)


def _raise_refusal(actor: User, change: ChangeRequest, refusal: DomainError | None, *, service: str) -> None:
    """Raise what a `<action>_refusal` rule returned; permission refusals are recorded as security events."""
    if isinstance(refusal, NotPermitted):
        raise _refuse(actor, change, refusal.message, service=service)
    if refusal is not None:
        raise refusal


def _snapshot(change: ChangeRequest) -> dict[str, Any]:
    """The reviewable content of a change as it goes into before/after of decision records."""
    return {
        "status": change.status,
        "revision": change.revision,
        "change_type": change.change_type,
        "template": change.template_id,
        "title": change.title,
        "justification": change.justification,
        "release": change.release.version,
        "release_sha256": change_release_sha256(change),
        "rollback_release": change.rollback_release.version,
        "target_scope": change.target_scope,
        "scope_devices": scope_devices(change.scope).count(),
        "impact_analysis": change.impact_analysis,
        "test_evidence_summary": change.test_evidence_summary,
        "requested_window": [change.requested_window_start.isoformat(), change.requested_window_end.isoformat()],
        "plan_hash": change_plan_hash(change),
        "rollout_plan": change.rollout_plan,
        "emergency_reason": change.emergency_reason,
        "risk_answers": change.risk_answers,
        "risk_score": change.risk_score,
        "risk_level": change.risk_level,
        "risk_raised_by": change.risk_raised_by,
    }


def _diff(before: dict[str, Any], after: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = [k for k in after if before.get(k) != after.get(k)]
    return {k: before.get(k) for k in keys}, {k: after[k] for k in keys}


def _record(
    actor: User | None,
    change: ChangeRequest,
    action: str,
    *,
    before: Any = None,
    after: Any = None,
    reason: str = "",
    system_actor: str = "system",
    step_key: str | None = None,
) -> None:
    record_decision(
        actor=actor,
        action=action,
        object_type="change",
        object_id=change.pk,
        revision=change.revision,
        before=before,
        after=after,
        reason=reason,
        system_actor=system_actor,
        step_key=step_key,
    )


def _nudge_workflow(change: ChangeRequest, reason: str) -> None:
    """After commit, start or signal the change's ChangeWorkflow so its timers follow the decision."""
    from workflows.change_client import nudge_change_workflow  # the Temporal client loads only when used

    change_id, status = change.pk, change.status
    transaction.on_commit(lambda: nudge_change_workflow(change_id, reason, status=status))


def _transition(
    *,
    actor: User | None,
    change: ChangeRequest,
    to: str,
    action: str,
    reason: str = "",
    system_actor: str = "system",
    **updates: Any,
) -> ChangeRequest:
    """The one guarded status change: checks the table, updates only from the expected status, records it, and
    tells the change's workflow after commit (its timers follow the status)."""
    if change.status == to and not updates:
        return change
    if to != change.status and to not in CHANGE_TRANSITIONS[change.status]:
        raise Conflict(f"A change that is {change.status} cannot become {to}.", code="invalid_transition")
    before = {"status": change.status}
    updated = ChangeRequest.objects.filter(pk=change.pk, status=change.status).update(
        status=to, updated_at=timezone.now(), **updates
    )
    if updated != 1:
        raise Conflict("The change was modified at the same time; reload it and try again.")
    change.refresh_from_db()
    after = {"status": to, **{k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in updates.items()}}
    _record(actor, change, action, before=before, after=after, reason=reason, system_actor=system_actor)
    if change.submitted_at is not None:  # a draft has no workflow (and a draft cancelled before submission none)
        _nudge_workflow(change, action)
    return change


def _lock(change: ChangeRequest) -> ChangeRequest:
    """Re-read the change under a row lock so concurrent decisions serialise."""
    # Lock the change row only (`of=("self",)`). A plain FOR UPDATE over this join also locks the joined release,
    # rollback release and artifact rows; wave assignment inserts deployments that reference those releases while
    # it holds the decision-record chain lock (their foreign-key checks take FOR KEY SHARE on the release row at
    # commit), and this service takes the chain lock after its row locks: the two deadlocked each other.
    return (
        ChangeRequest.objects.select_for_update(of=("self",))
        .select_related("release__artifact", "rollback_release")
        .get(pk=change.pk)
    )


def _assess(change: ChangeRequest) -> RiskAssessment:
    summary = scope_summary(change.scope)
    return risk_assess(answers=change.risk_answers, scope_summary=summary)


def _apply_assessment(change: ChangeRequest, assessment: RiskAssessment) -> None:
    change.risk_score = assessment.score
    change.risk_level = assessment.level
    change.risk_raised_by = assessment.raised_by


def _plan_with_known_regions(value: object) -> dict[str, Any]:
    """The plan (typed, or JSON parsed here) as stored, once every region it names in windows or pacing exists."""
    plan = plan_parse(value)
    named = plan.named_regions()
    unknown = sorted(named - set(Region.objects.filter(code__in=named).values_list("code", flat=True)))
    if unknown:
        raise InvalidInput(
            "The rollout plan names unknown regions.",
            fields={"rollout_plan": {"regions": [f"Unknown region codes: {', '.join(unknown)}."]}},
        )
    return plan.to_json()


def _validate_shape(fields: dict[str, Any]) -> dict[str, Any]:
    """Checks that hold for drafts too: scope, plan, answers, window, releases, type-specific fields."""
    errors: dict[str, Any] = {}
    cleaned = dict(fields)
    for key, check in (
        ("target_scope", lambda v: scope_parse(v).to_json()),
        ("rollout_plan", _plan_with_known_regions),
        ("risk_answers", lambda v: risk_answers_validate(v, risk_questionnaire())),
    ):
        if key in fields:
            try:
                cleaned[key] = check(fields[key])
            except InvalidInput as exc:
                errors.update(exc.fields)
    start, end = fields.get("requested_window_start"), fields.get("requested_window_end")
    if start and end and end <= start:
        errors["requested_window_end"] = ["The window must end after it starts."]
    release, rollback = fields.get("release"), fields.get("rollback_release")
    if release and rollback and release.pk == rollback.pk:
        errors["rollback_release"] = ["The rollback release must differ from the release being rolled out."]
    change_type = fields.get("change_type")
    if change_type == ChangeType.EMERGENCY and not (fields.get("emergency_reason") or "").strip():
        errors["emergency_reason"] = ["An emergency change needs a reason."]
    template = fields.get("template")
    if change_type == ChangeType.STANDARD and template is None:
        errors["template"] = ["A standard change must be made from a pre-approved template."]
    if change_type != ChangeType.STANDARD and template is not None:
        errors["template"] = ["Only standard changes use a template."]
    if template is not None and not template.is_active:
        errors["template"] = ["This template is retired."]
    if errors:
        raise InvalidInput("The change request is invalid.", fields=errors)
    return cleaned


def _readiness_errors(change: ChangeRequest, assessment: RiskAssessment) -> dict[str, list[str]]:
    """Checks a change must pass to be reviewed: its scope, releases, answers, window and policy."""
    errors: dict[str, list[str]] = {}
    if assessment.unanswered:
        errors["risk_answers"] = [f"Unanswered: {', '.join(assessment.unanswered)}."]
    summary = scope_summary(change.scope)
    if summary["devices"] == 0:
        errors["target_scope"] = ["The scope hits no active device."]
    release_models = set(change.release.hardware_models.values_list("name", flat=True))
    unsupported = sorted(set(summary["by_hardware_model"]) - release_models)
    if unsupported:
        errors.setdefault("release", []).append(
            f"Release {change.release.version} does not support targeted hardware models: {', '.join(unsupported)}."
        )
    errors_rollback = rollback_plan_errors(change)
    if errors_rollback:
        errors.setdefault("rollback_release", []).extend(errors_rollback)
    targets = scope_devices(change.scope)
    ahead = targets.filter(installed_release_counter__gt=change.release.release_counter).count()
    if ahead:
        errors.setdefault("release", []).append(
            f"{ahead} targeted devices already run a release counter above {change.release.release_counter} "
            "(anti-rollback: the counter never goes down)."
        )
    plan = change.plan
    if plan is not None and plan.starts_with_pilot and not targets.filter(tags__name="pilot").exists():
        errors["rollout_plan"] = ["The plan starts with a pilot wave but no targeted device is tagged pilot."]
    if change.requested_window_end <= timezone.now():
        errors["requested_window_end"] = ["The requested window is already over."]
    policy = policy_for(change)
    if policy is None or not policy.allowed:
        errors.setdefault("risk_level", []).append(
            f"No approval policy allows a {change.change_type} change at {change.risk_level} risk."
        )
    if change.change_type == ChangeType.STANDARD and change.template is not None:
        if risk_rank(change.risk_level) > risk_rank(change.template.max_risk_level):
            errors.setdefault("risk_level", []).append(
                f"Template '{change.template.name}' covers risk up to {change.template.max_risk_level}."
            )
        template_models = set(change.template.hardware_models.values_list("name", flat=True))
        if template_models and set(summary["by_hardware_model"]) - template_models:
            errors.setdefault("template", []).append("The scope reaches hardware models the template does not cover.")
    return errors


def rollback_plan_errors(change: ChangeRequest) -> list[str]:
    """Why the change could not roll back its targets (empty when it can); checked at submission and at start.

    The release counter is a security epoch that never goes down on a device: devices that took the new release
    commit its counter, so the rollback release needs a counter at least as high (the old image re-released with
    the current counter is the usual way). It must support every targeted hardware model and be the software the
    targets run today (the same version, or a re-release of the same image).
    """
    problems: list[str] = []
    rollback, release = change.rollback_release, change.release
    summary = scope_summary(change.scope)
    if rollback.release_counter < release.release_counter:
        problems.append(
            f"Rollback release {rollback.version} has release counter {rollback.release_counter}, below "
            f"{release.release_counter} of {release.version}: devices that take {release.version} could never "
            f"roll back (anti-rollback). Re-release the old image with counter {release.release_counter}."
        )
    rollback_models = set(rollback.hardware_models.values_list("name", flat=True))
    if set(summary["by_hardware_model"]) - rollback_models:
        problems.append(f"Rollback release {rollback.version} does not support every targeted hardware model.")
    same_image = set(rollback.artifact.releases.values_list("version", flat=True))
    elsewhere = {v: n for v, n in summary["by_version"].items() if v not in same_image}
    if elsewhere:
        listing = ", ".join(f"{n} on {v}" for v, n in elsewhere.items())
        problems.append(
            f"The rollback release must be the software every target runs today (the same version or the same "
            f"image re-released); {listing}. Narrow the scope."
        )
    return problems


def _require_ready(change: ChangeRequest, assessment: RiskAssessment) -> None:
    errors = _readiness_errors(change, assessment)
    if errors:
        raise InvalidInput("The change is not ready for review.", fields=errors)


@atomic_with_retry()
def change_create(*, actor: User, **fields: Any) -> ChangeRequest:
    """File a new change request as a draft; only requesters file changes."""
    refusal = change_create_refusal(actor)
    if refusal is not None:
        raise _refuse(actor, None, refusal.message, service="change_create")
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidInput("Unknown fields.", fields={k: ["Unknown field."] for k in sorted(unknown)})
    fields.setdefault("change_type", ChangeType.NORMAL)
    fields.setdefault("risk_answers", {})
    if fields["change_type"] == ChangeType.EMERGENCY:
        _raise_emergency_refusal(actor)
    cleaned = _validate_shape(fields)
    change = ChangeRequest(author=actor, status=ChangeStatus.DRAFT, **cleaned)
    _apply_assessment(change, _assess(change))
    change.save()
    _record(actor, change, "change.create", after=_snapshot(change))
    return change


def _raise_emergency_refusal(actor: User) -> None:
    """An author whose emergency change's retrospective review is overdue files no other emergency change."""
    refusal = emergency_filing_refusal(actor)
    if refusal is not None:
        raise InvalidInput(refusal.message, fields={"change_type": [refusal.message]})


def _void_approvals(actor: User | None, change: ChangeRequest, reason: str, *, system_actor: str = "system") -> int:
    now = timezone.now()
    voided = list(change.approvals.filter(voided_at__isnull=True).values_list("pk", flat=True))
    if voided:
        change.approvals.filter(pk__in=voided).update(voided_at=now, void_reason=reason[:200])
        _record(
            actor,
            change,
            "change.approvals_void",
            after={"voided_approvals": voided},
            reason=reason,
            system_actor=system_actor,
        )
    return len(voided)


@atomic_with_retry()
def change_update(*, actor: User, change: ChangeRequest, **fields: Any) -> ChangeRequest:
    """Edit a change; after submission every edit bumps the revision and voids all approvals given so far."""
    change = _lock(change)
    _raise_refusal(actor, change, change_edit_refusal(actor, change), service="change_update")
    unknown = set(fields) - set(EDITABLE_FIELDS)
    if unknown:
        raise InvalidInput("Unknown fields.", fields={k: ["Unknown field."] for k in sorted(unknown)})
    merged = {name: getattr(change, name) for name in EDITABLE_FIELDS}
    merged.update(fields)
    if merged["change_type"] == ChangeType.EMERGENCY and change.change_type != ChangeType.EMERGENCY:
        _raise_emergency_refusal(actor)
    cleaned = _validate_shape(merged)
    before = _snapshot(change)
    for name, value in cleaned.items():
        setattr(change, name, value)
    assessment = _assess(change)
    _apply_assessment(change, assessment)
    changed_before, changed_after = _diff(before, _snapshot(change))
    if not changed_after:
        return change
    submitted = change.status != ChangeStatus.DRAFT
    if submitted:
        if change.status != ChangeStatus.CHANGES_REQUESTED:
            _require_ready(change, assessment)
        change.revision += 1
    change.save()
    _record(actor, change, "change.edit", before=changed_before, after=changed_after)
    if submitted:
        change = _back_to_review(
            actor,
            change,
            voided=f"revision {change.revision} supersedes earlier revisions",
            reason="edited after submission",
            action="change.edit",
        )
    return change


def _back_to_review(actor: User, change: ChangeRequest, *, voided: str, reason: str, action: str) -> ChangeRequest:
    """After a submitted change changed: void its approvals and, when it was in review or approved, send it back to
    the CAB as a resubmission (the review clock starts again); otherwise tell its workflow what happened."""
    _void_approvals(actor, change, voided)
    if change.status in (ChangeStatus.IN_REVIEW, ChangeStatus.APPROVED):
        return _transition(
            actor=actor,
            change=change,
            to=ChangeStatus.SUBMITTED,
            action="change.resubmit",
            reason=reason,
            review_started_at=timezone.now(),
        )
    _nudge_workflow(change, action)
    return change


@atomic_with_retry()
def change_submit(*, actor: User, change: ChangeRequest) -> ChangeRequest:
    """Send a draft (or a change that was sent back) to the CAB; it must pass every readiness check."""
    change = _lock(change)
    _raise_refusal(actor, change, change_submit_refusal(actor, change), service="change_submit")
    if change.change_type == ChangeType.EMERGENCY:
        _raise_emergency_refusal(actor)
    assessment = _assess(change)
    _apply_assessment(change, assessment)
    _require_ready(change, assessment)
    frozen = window_frozen_refusal(change)
    if frozen is not None:
        raise InvalidInput(frozen.message, fields={"requested_window_end": [frozen.message]})
    change.save(update_fields=["risk_score", "risk_level", "risk_raised_by"])
    now = timezone.now()
    return _transition(
        actor=actor,
        change=change,
        to=ChangeStatus.SUBMITTED,
        action="change.submit",
        submitted_at=now,
        review_started_at=now,
    )


def _decide(*, actor: User, change: ChangeRequest, revision: int, decision: str, comment: str) -> ChangeRequest:
    change = _lock(change)
    # Who may decide, in which status, and only once per revision: one rule shared with the change page.
    _raise_refusal(actor, change, decision_refusal(actor, change, decision), service="approval_decide")
    if revision != change.revision:
        security_event(
            kind=SecurityEventKind.STALE_REVISION,
            source=f"approvals.approval_{decision}",
            message=f"A decision on revision {revision} was refused: the change is at revision {change.revision}.",
            actor=actor,
            subject=f"change:{change.pk}",
        )
        raise Conflict(
            f"You reviewed revision {revision}, but the change is now at revision {change.revision}; review it again.",
            code="stale_revision",
        )
    if decision != ApprovalDecision.APPROVED and not comment.strip():
        raise InvalidInput("A rejection or a request for changes needs a comment.", fields={"comment": ["Required."]})
    actor_roles = roles_of(actor)
    approval = Approval.objects.create(
        change=change,
        approver=actor,
        decision=decision,
        comment=comment,
        roles_held=sorted(actor_roles),
        revision=change.revision,
        release_sha256=change_release_sha256(change),
        plan_hash=change_plan_hash(change),
    )
    record_decision(
        actor=actor,
        action=f"approval.{decision}",
        object_type="approval",
        object_id=approval.pk,
        revision=change.revision,
        after={
            "change": change.pk,
            "decision": decision,
            "roles_held": approval.roles_held,
            "release_sha256": approval.release_sha256,
            "plan_hash": approval.plan_hash,
        },
        reason=comment,
    )
    if decision == ApprovalDecision.REJECTED:
        return _transition(actor=actor, change=change, to=ChangeStatus.REJECTED, action="change.reject", reason=comment)
    if decision == ApprovalDecision.CHANGES_REQUESTED:
        return _transition(
            actor=actor,
            change=change,
            to=ChangeStatus.CHANGES_REQUESTED,
            action="change.request_changes",
            reason=comment,
        )
    if change.status == ChangeStatus.APPROVED:
        # A security officer's approval of an approved emergency change (its freeze exemption): recorded above,
        # nothing else moves.
        _nudge_workflow(change, "approval.approved")
        return change
    if change.status == ChangeStatus.SUBMITTED:
        change = _transition(actor=actor, change=change, to=ChangeStatus.IN_REVIEW, action="change.review_started")
    progress = change_policy_progress(change)
    if progress.satisfied:
        now = timezone.now()
        policy = policy_for(change)
        due = None
        if change.change_type == ChangeType.EMERGENCY and policy and policy.retrospective_days is not None:
            due = now + timedelta(days=policy.retrospective_days)
        change = _transition(
            actor=actor,
            change=change,
            to=ChangeStatus.APPROVED,
            action="change.approve",
            reason=progress.summary(),
            approved_at=now,
            retrospective_due_at=due,
            approval_lapsed_at=None,
            approval_lapse_reason="",
        )
    return change


@atomic_with_retry()
def approval_grant(*, actor: User, change: ChangeRequest, revision: int, comment: str = "") -> ChangeRequest:
    """Approve one revision; the change is approved once the policy's role slots are filled by distinct people."""
    return _decide(actor=actor, change=change, revision=revision, decision=ApprovalDecision.APPROVED, comment=comment)


@atomic_with_retry()
def approval_reject(*, actor: User, change: ChangeRequest, revision: int, comment: str) -> ChangeRequest:
    """Reject a change (final); a comment is required."""
    return _decide(actor=actor, change=change, revision=revision, decision=ApprovalDecision.REJECTED, comment=comment)


@atomic_with_retry()
def approval_request_changes(*, actor: User, change: ChangeRequest, revision: int, comment: str) -> ChangeRequest:
    """Send a change back to its author; a comment is required."""
    return _decide(
        actor=actor, change=change, revision=revision, decision=ApprovalDecision.CHANGES_REQUESTED, comment=comment
    )


def change_assert_approved(change: ChangeRequest) -> None:
    """Re-check, from the approvals themselves, that a change is approved as it stands (used before release)."""
    if change.status not in (ChangeStatus.APPROVED, ChangeStatus.SCHEDULED, ChangeStatus.IMPLEMENTING):
        raise Conflict(f"The change is {change.status}, not approved.", code="not_approved")
    progress = change_policy_progress(change)
    if not progress.satisfied:
        raise Conflict(f"The approvals no longer satisfy the policy: {progress.summary()}.", code="not_approved")


@atomic_with_retry()
def change_schedule(*, actor: User, change: ChangeRequest, start: datetime) -> ChangeRequest:
    """Schedule (or re-schedule) an approved change inside its requested window; operators only, never the author.

    At `start` the change's workflow starts the rollout as this operator, after the pre-flight (a re-schedule moves
    that timer; the operator who re-schedules becomes the one the rollout starts as)."""
    change = _lock(change)
    refusal = change_schedule_refusal(actor, change)
    if not isinstance(refusal, NotPermitted) and change.status == ChangeStatus.SCHEDULED:
        if change.scheduled_start == start and change.scheduled_by_id == actor.pk:
            return change  # the same request again (a retry): a no-op
    _raise_refusal(actor, change, refusal, service="change_schedule")
    if not change.requested_window_start <= start < change.requested_window_end:
        raise InvalidInput(
            "The start must fall inside the requested window.", fields={"start": ["Outside the window."]}
        )
    frozen = freeze_refusal(change, at=start)
    if frozen is not None:
        raise InvalidInput(frozen.message, fields={"start": ["Inside a change freeze."]})
    expires = change_approval_expires_at(change)
    if expires is not None and start >= expires:
        raise InvalidInput(
            f"The approval lapses at {expires:%Y-%m-%d %H:%M} UTC, before this start.",
            fields={"start": [f"After the approval lapses ({expires:%Y-%m-%d %H:%M} UTC)."]},
        )
    if change.status == ChangeStatus.SCHEDULED:
        before = {"scheduled_start": change.scheduled_start.isoformat() if change.scheduled_start else None}
        ChangeRequest.objects.filter(pk=change.pk).update(
            scheduled_start=start, scheduled_by=actor, updated_at=timezone.now()
        )
        change.refresh_from_db()
        _record(actor, change, "change.reschedule", before=before, after={"scheduled_start": start.isoformat()})
        _nudge_workflow(change, "change.reschedule")
        return change
    return _transition(
        actor=actor,
        change=change,
        to=ChangeStatus.SCHEDULED,
        action="change.schedule",
        scheduled_start=start,
        scheduled_by_id=actor.pk,
        start_held_at=None,
        start_held_reason="",
    )


@atomic_with_retry()
def change_mark_implementing(*, actor: User, change: ChangeRequest) -> ChangeRequest:
    """A rollout of the change has started (called by the rollout service, which checked who may start it)."""
    change = _lock(change)
    change_assert_approved(change)
    return _transition(actor=actor, change=change, to=ChangeStatus.IMPLEMENTING, action="change.implementing")


def _on_behalf_of(user: User | None, component: str = TIMER_ACTOR) -> str:
    """The system actor's name for an automatic step taken for a person (decision records say both)."""
    return f"{component} for {user.get_username()}"[:140] if user is not None else component


@atomic_with_retry()
def change_approval_lapse(*, change_id: int, now: datetime) -> ChangeRequest | None:
    """Lapse the approval of an approved or scheduled change whose approval expired (window closed or too old).

    A lapsed change needs a fresh decision: its revision is bumped (as for an edit), the approvals are voided, and
    it goes back to submitted with a new review clock; the lapse is marked on the change. Idempotent, and a no-op
    when the database says nothing expired at `now` (a timer that fired early or was forged changes nothing).
    """
    change = ChangeRequest.objects.select_for_update(of=("self",)).select_related("release__artifact").get(pk=change_id)
    expires = change_approval_expires_at(change)
    if expires is None or now < expires:
        return None
    closed = expires >= change.requested_window_end
    why = "the requested window closed" if closed else "the approval is older than the policy allows"
    change.revision += 1
    change.save(update_fields=["revision", "updated_at"])
    # On whose behalf: the approval policy whose validity ran out (its voided approvals and the lapse alike).
    timer = f"{TIMER_ACTOR} for approval policy {change.change_type}/{change.risk_level}"
    _void_approvals(None, change, f"approval lapsed: {why}", system_actor=timer)
    return _transition(
        actor=None,
        change=change,
        to=ChangeStatus.SUBMITTED,
        action="change.approval_lapsed",
        reason=f"The approval lapsed at {expires:%Y-%m-%d %H:%M} UTC: {why}; the change needs a fresh decision.",
        system_actor=timer,
        review_started_at=now,
        scheduled_start=None,
        scheduled_by_id=None,
        approval_lapsed_at=now,
        approval_lapse_reason=f"Lapsed: {why}."[:200],
    )


@atomic_with_retry()
def change_start_hold(*, change_id: int, reason: str, now: datetime) -> ChangeRequest | None:
    """Hold a scheduled change whose pre-flight refused the automatic start: back to approved, recorded, an alert for
    the operators on call, and the operator who scheduled it told by e-mail. A person looks, fixes what the reason names, and schedules or starts it again."""
    change = ChangeRequest.objects.select_for_update(of=("self",)).select_related("scheduled_by").get(pk=change_id)
    if change.status != ChangeStatus.SCHEDULED:
        return None
    operator = change.scheduled_by
    held = _transition(
        actor=None,
        change=change,
        to=ChangeStatus.APPROVED,
        action="change.start_held",
        reason=reason,
        system_actor=_on_behalf_of(operator),
        scheduled_start=None,
        scheduled_by_id=None,
        start_held_at=now,
        start_held_reason=reason,
    )
    alert_start_held(change=change, scheduled_by=operator.get_username() if operator else "", reason=reason)
    if operator is not None:  # also when they have left the operator role the alert mails
        notify_people(
            [operator],
            subject=f"CR-{change.pk} did not start: {change.title}",
            body=(
                f"The rollout of change CR-{change.pk} ({change.title}) was due to start at "
                f"{now:%Y-%m-%d %H:%M} UTC as scheduled by you, but the pre-flight check refused it:\n\n{reason}\n\n"
                "The change is held (approved, no longer scheduled). Fix the cause, then schedule or start it again."
            ),
        )
    return held


IMPLEMENTATION_OUTCOMES = {
    "completed": ChangeStatus.COMPLETED,
    "rolled_back": ChangeStatus.ROLLED_BACK,
    "aborted": ChangeStatus.CANCELLED,
}


@atomic_with_retry()
def change_mark_implemented(
    *, actor: User | None, change: ChangeRequest, outcome: str, reason: str = ""
) -> ChangeRequest:
    """Close a change after its rollout ended: completed, rolled back, or cancelled when the rollout was aborted."""
    change = _lock(change)
    to = IMPLEMENTATION_OUTCOMES[outcome]
    updates: dict[str, Any] = {}
    if to in (ChangeStatus.COMPLETED, ChangeStatus.ROLLED_BACK) and change.status != to:
        policy = policy_for(change)
        days = policy.post_review_days if policy is not None else 5
        updates["post_review_due_at"] = timezone.now() + timedelta(days=days)
    return _transition(actor=actor, change=change, to=to, action=f"change.{outcome}", reason=reason, **updates)


@atomic_with_retry()
def change_cancel(*, actor: User, change: ChangeRequest, reason: str) -> ChangeRequest:
    """Withdraw a change whose rollout has not started; its author or a CAB member may, with a reason."""
    change = _lock(change)
    _raise_refusal(actor, change, change_cancel_refusal(actor, change), service="change_cancel")
    if not reason.strip():
        raise InvalidInput("Cancelling needs a reason.", fields={"reason": ["Required."]})
    return _transition(actor=actor, change=change, to=ChangeStatus.CANCELLED, action="change.cancel", reason=reason)


@atomic_with_retry()
def change_retrospective_complete(*, actor: User, change: ChangeRequest, comment: str) -> ChangeRequest:
    """Record the retrospective review an approved emergency change owes the full CAB."""
    change = _lock(change)
    _raise_refusal(actor, change, retrospective_refusal(actor, change), service="change_review")
    if not comment.strip():
        raise InvalidInput("The review needs a comment.", fields={"comment": ["Required."]})
    now = timezone.now()
    ChangeRequest.objects.filter(pk=change.pk).update(retrospective_done_at=now)
    change.retrospective_done_at = now
    _record(
        actor,
        change,
        "change.retrospective_review",
        after={"overdue": change.retrospective_due_at is not None and now > change.retrospective_due_at},
        reason=comment,
    )
    _nudge_workflow(change, "change.retrospective_review")
    return change


@atomic_with_retry()
def change_post_implementation_review(*, actor: User, change: ChangeRequest, comment: str) -> ChangeRequest:
    """Record the post-implementation review of a completed or rolled-back change."""
    change = _lock(change)
    _raise_refusal(actor, change, post_review_refusal(actor, change), service="change_review")
    if not comment.strip():
        raise InvalidInput("The review needs a comment.", fields={"comment": ["Required."]})
    now = timezone.now()
    ChangeRequest.objects.filter(pk=change.pk).update(post_review_done_at=now)
    change.post_review_done_at = now
    _record(actor, change, "change.post_implementation_review", reason=comment)
    _nudge_workflow(change, "change.post_implementation_review")
    return change


@atomic_with_retry()
def evidence_add(*, actor: User, change: ChangeRequest, upload: UploadedFile) -> TestEvidence:
    """Attach a test evidence file; after submission this is an edit (revision bump, approvals void)."""
    change = _lock(change)
    _raise_refusal(actor, change, evidence_add_refusal(actor, change), service="evidence_add")
    name = validate_file_name(upload.name or "", field="file")
    stored = store_content_addressed(root=settings.EVIDENCE_ROOT, upload=upload, max_bytes=settings.EVIDENCE_MAX_BYTES)
    if change.status != ChangeStatus.DRAFT:
        change.revision += 1
        change.save(update_fields=["revision", "updated_at"])
    evidence = TestEvidence.objects.create(
        change=change,
        file_name=name,
        sha256=stored.sha256,
        size_bytes=stored.size_bytes,
        storage_path=stored.relative_path,
        uploaded_by=actor,
        revision=change.revision,
    )
    _record(
        actor,
        change,
        "change.evidence_add",
        after={"file_name": name, "sha256": stored.sha256, "size_bytes": stored.size_bytes},
    )
    if change.status != ChangeStatus.DRAFT:
        _back_to_review(
            actor,
            change,
            voided=f"revision {change.revision} adds test evidence",
            reason="test evidence added after submission",
            action="change.evidence_add",
        )
    return evidence
