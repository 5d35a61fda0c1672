"""Read-side queries for change requests, approvals and policy progress."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.http import Http404
from django.utils import timezone

from approvals.choices import (
    CHANGE_CANCELLABLE,
    CHANGE_EDITABLE,
    CHANGE_PENDING_REVIEW,
    CHANGE_REVIEWABLE,
    CHANGE_ROLLOUT_RUNNING,
    RISK_ORDER,
    ApprovalDecision,
    ChangeStatus,
)
from approvals.models import Approval, ApprovalPolicy, ChangeRequest, DecisionRecord
from approvals.plans import plan_hash, wave_sizes
from approvals.policy import ROLE_LABELS, PolicyProgress, Vote, policy_progress
from devices.scope import scope_devices
from ota_project.errors import Conflict, DomainError, NotPermitted
from ota_project.roles import APPROVER_ROLES, Role, has_role, roles_of


def change_list_for_user(user: User) -> QuerySet[ChangeRequest]:
    """Changes a user may see: every non-draft change for any role holder, drafts only for their author."""
    if not roles_of(user):
        return ChangeRequest.objects.none()
    return (
        ChangeRequest.objects.filter(~Q(status=ChangeStatus.DRAFT) | Q(author=user))
        .select_related("release__artifact", "rollback_release", "author", "template")
        .prefetch_related("release__hardware_models")
    )


def change_get_for_user(user: User, pk: Any) -> ChangeRequest:
    """One change the user may see; 404 both for a missing change and for one that is not theirs to see."""
    try:
        return change_list_for_user(user).get(pk=int(pk))
    except (ChangeRequest.DoesNotExist, ValueError, TypeError, OverflowError) as exc:
        raise Http404("No such change request.") from exc


def change_release_sha256(change: ChangeRequest) -> str:
    return change.release.artifact.sha256


def change_plan_hash(change: ChangeRequest) -> str:
    return plan_hash(change.rollout_plan)


def policy_for(change: ChangeRequest) -> ApprovalPolicy | None:
    """The approval policy for the change's type and current risk level."""
    return (
        ApprovalPolicy.objects.filter(change_type=change.change_type, risk_level=change.risk_level)
        .prefetch_related("requirements")
        .first()
    )


def policy_requirements(policy: ApprovalPolicy | None) -> dict[str, int]:
    return {r.role: r.count for r in policy.requirements.all()} if policy else {}


def valid_approvals(change: ChangeRequest) -> QuerySet[Approval]:
    """Approvals that still count: not voided and bound to the current revision, release hash and plan hash."""
    return change.approvals.filter(
        decision=ApprovalDecision.APPROVED,
        voided_at__isnull=True,
        revision=change.revision,
        release_sha256=change_release_sha256(change),
        plan_hash=change_plan_hash(change),
    ).select_related("approver")


def change_policy_progress(change: ChangeRequest) -> PolicyProgress:
    """Which required role slots the current valid approvals fill (author excluded, one person once)."""
    votes = [Vote(a.approver_id, frozenset(a.roles_held)) for a in valid_approvals(change)]
    return policy_progress(policy_requirements(policy_for(change)), votes, author_id=change.author_id)


def change_decision_blockers(user: User, change: ChangeRequest) -> list[str]:
    """Why this user may not approve this change now (empty when they may); the same rule the service applies."""
    refusal = decision_refusal(user, change, ApprovalDecision.APPROVED)
    return [refusal.message] if refusal is not None else []


def cab_queue(user: User) -> QuerySet[ChangeRequest]:
    """Changes awaiting review, highest risk first, then by requested window."""
    risk_rank = Case(
        *[When(risk_level=level, then=Value(i)) for i, level in enumerate(RISK_ORDER)],
        output_field=IntegerField(),
    )
    if not roles_of(user) & APPROVER_ROLES:
        return ChangeRequest.objects.none()
    return (
        change_list_for_user(user)
        .filter(status__in=CHANGE_PENDING_REVIEW)
        .annotate(risk_rank=risk_rank)
        .order_by("-risk_rank", "requested_window_start", "id")
    )


def change_list_retrospective_overdue() -> QuerySet[ChangeRequest]:
    """Emergency changes whose retrospective review is past due and not done."""
    return ChangeRequest.objects.filter(
        retrospective_due_at__lt=timezone.now(), retrospective_done_at__isnull=True
    ).order_by("retrospective_due_at")


def change_history(change: ChangeRequest) -> QuerySet[DecisionRecord]:
    """Decision records about this change and its approvals, in chain order."""
    approval_ids = [str(pk) for pk in change.approvals.values_list("pk", flat=True)]
    return DecisionRecord.objects.filter(
        Q(object_type="change", object_id=str(change.pk)) | Q(object_type="approval", object_id__in=approval_ids)
    ).order_by("seq")


DECISION_VERBS: dict[str, str] = {
    ApprovalDecision.APPROVED: "approved",
    ApprovalDecision.REJECTED: "rejected",
    ApprovalDecision.CHANGES_REQUESTED: "requested changes on",
}


def _role_list(roles: Iterable[str]) -> str:
    return ", ".join(ROLE_LABELS.get(role, role) for role in sorted(roles)) or "nobody"


def decision_refusal(user: User, change: ChangeRequest, decision: str) -> DomainError | None:
    """Why `user` may not make `decision` on the change as it stands (None when they may).

    The one statement of who may decide: `approvals.services` raises what this returns, and the change page
    shows its message, so the page never promises an action the service would refuse.
    """
    if change.author_id == user.pk:
        return NotPermitted("You are the author of this change; authors never approve their own change.")
    held = roles_of(user)
    required = set(policy_requirements(policy_for(change)))
    if decision == ApprovalDecision.APPROVED:
        if not held & required:
            return NotPermitted(
                f"Your role is not needed by the policy for a {change.risk_level}-risk {change.change_type} change "
                f"(it needs: {_role_list(required)})."
            )
    elif not held & APPROVER_ROLES:
        return NotPermitted(
            f"Your roles ({_role_list(held)}) do not take part in change decisions "
            f"(CAB, emergency CAB and the security officer do)."
        )
    if change.status not in CHANGE_REVIEWABLE:
        return Conflict(
            f"The change is not in review; it is {change.get_status_display().lower()}.", code="not_reviewable"
        )
    earlier = change.approvals.filter(approver=user, revision=change.revision).first()
    if earlier is not None:
        return Conflict(
            f"You already {DECISION_VERBS.get(earlier.decision, 'decided on')} revision {change.revision} "
            "(already decided: one person counts once).",
            code="already_decided",
        )
    return None


ROLLOUT_RUNNING_MESSAGE = "Its rollout is running: abort the rollout (which closes the change) instead."


def change_cancel_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not cancel the change as it stands (None when they may); the service and the page both ask.

    The author (still a requester) or a CAB member may cancel until the rollout starts; once it runs, cancelling
    the change would leave the rollout offering the release, so only aborting the rollout closes the change.
    """
    is_author = change.author_id == user.pk and has_role(user, Role.REQUESTER)
    if not is_author and not has_role(user, Role.CAB_MEMBER):
        return NotPermitted("Only the author or a CAB member may cancel a change.")
    if change.status in CHANGE_ROLLOUT_RUNNING:
        return Conflict(ROLLOUT_RUNNING_MESSAGE, code="rollout_running")
    if change.status not in CHANGE_CANCELLABLE:
        return Conflict(
            f"A change that is {change.get_status_display().lower()} cannot be cancelled.", code="invalid_transition"
        )
    return None


def evidence_add_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not attach test evidence to the change as it stands (None when they may); service and page ask."""
    if change.author_id != user.pk or not has_role(user, Role.REQUESTER):
        return NotPermitted("Only the author may attach test evidence.")
    if change.status not in CHANGE_EDITABLE:
        return Conflict(
            f"A change that is {change.get_status_display().lower()} can no longer be edited.", code="not_editable"
        )
    return None


@dataclass(frozen=True)
class WavePreview:
    """How many devices one wave of a plan would take from a scope, as planned before the rollout starts."""

    index: int
    name: str
    cohort: dict[str, Any]
    devices: int
    promotion: str


def plan_wave_preview(plan: dict[str, Any], scope: dict[str, list[str]]) -> list[WavePreview]:
    """Devices per wave for a (normalized) plan over a (normalized) scope, by the rollout's sizing rule.

    Uses `approvals.plans.wave_sizes`, the arithmetic the rollout itself plans its waves with.
    """
    targets = scope_devices(scope)
    pilots = targets.filter(tags__name="pilot").values("pk").distinct().count()
    waves = plan.get("waves", [])
    sizes = wave_sizes(waves, total=targets.count(), pilots=pilots)
    return [
        WavePreview(index, wave["name"], dict(wave["cohort"]), size, wave["promotion"])
        for index, (wave, size) in enumerate(zip(waves, sizes, strict=True))
    ]
