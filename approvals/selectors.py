"""Read-side queries for change requests, approvals and policy progress."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from django.contrib.auth.models import User
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.http import Http404
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.choices import (
    CHANGE_CANCELLABLE,
    CHANGE_EDITABLE,
    CHANGE_PENDING_REVIEW,
    CHANGE_REVIEWABLE,
    CHANGE_ROLLOUT_RUNNING,
    RISK_ORDER,
    ApprovalDecision,
    ChangeStatus,
    ChangeType,
)
from approvals.models import Approval, ApprovalPolicy, ChangeFreeze, ChangeRequest
from approvals.plans import Cohort, RolloutPlan, plan_hash, wave_sizes
from approvals.policy import ROLE_LABELS, PolicyProgress, Vote, policy_progress
from devices.scope import TargetScope, scope_devices
from ota_project.errors import Conflict, DomainError, NotPermitted
from ota_project.roles import APPROVER_ROLES, Role, has_role, operator_not_author_refusal, roles_of

# Used when no policy row matches (a change that failed readiness never reaches review; these are a safety net).
DEFAULT_REVIEW_DEADLINE_MINUTES = 2880
DEFAULT_APPROVAL_VALID_MINUTES = 20160


def change_list_for_user(user: User) -> QuerySet[ChangeRequest]:
    """Changes a user may see: every non-draft change for any role holder, drafts only for their author."""
    if not roles_of(user):
        return ChangeRequest.objects.none()
    return (
        ChangeRequest.objects.filter(~Q(status=ChangeStatus.DRAFT) | Q(author=user))
        .select_related("release__artifact", "rollback_release", "author", "template", "scheduled_by")
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
    """The approval policy for the change's type and current risk level.

    Kept on the change object for its type and risk (a page asks several rules about one change, each asking for
    the policy); a service re-reads the change under its lock, so it reads the policy afresh."""
    key = (change.change_type, change.risk_level)
    cached = getattr(change, "_ota_policy", None)
    if cached is not None and cached[0] == key:
        return cast("ApprovalPolicy | None", cached[1])
    policy = (
        ApprovalPolicy.objects.filter(change_type=change.change_type, risk_level=change.risk_level)
        .prefetch_related("requirements")
        .first()
    )
    change._ota_policy = (key, policy)  # type: ignore[attr-defined]  # a per-object cache, not a field
    return policy


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


def emergency_filing_refusal(user: User, *, now: datetime | None = None) -> DomainError | None:
    """Why `user` may not file (or submit) an emergency change now: a retrospective review of an emergency change
    they authored is overdue (None when they may). The review is done by the CAB; the author asks for it."""
    overdue = (
        ChangeRequest.objects.filter(
            author=user, retrospective_due_at__lt=now or timezone.now(), retrospective_done_at__isnull=True
        )
        .order_by("retrospective_due_at")
        .first()
    )
    if overdue is None:
        return None
    return Conflict(
        f"The retrospective review of your emergency change CR-{overdue.pk} was due "
        f"{overdue.retrospective_due_at:%Y-%m-%d %H:%M} UTC and is not done; no further emergency change until it is.",
        code="retrospective_overdue",
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
    if not held & APPROVER_ROLES:
        return NotPermitted(
            f"Your roles ({_role_list(held)}) do not take part in change decisions "
            f"(CAB, emergency CAB and the security officer do); you see this change read-only."
        )
    required = set(policy_requirements(policy_for(change)))
    if decision == ApprovalDecision.APPROVED:
        # A security officer may always approve an emergency change: that approval lets it pass change freezes.
        emergency_officer = change.change_type == ChangeType.EMERGENCY and Role.SECURITY_OFFICER in held
        if not held & required and not emergency_officer:
            return NotPermitted(
                f"Your role is not needed by the policy for a {change.risk_level}-risk {change.change_type} change "
                f"(it needs: {_role_list(required)})."
            )
    # ... also once it is approved, to let it pass a freeze declared after the approval.
    freeze_exemption = (
        decision == ApprovalDecision.APPROVED
        and change.change_type == ChangeType.EMERGENCY
        and Role.SECURITY_OFFICER in held
        and change.status == ChangeStatus.APPROVED
    )
    if change.status not in CHANGE_REVIEWABLE and not freeze_exemption:
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


def change_create_refusal(user: User) -> NotPermitted | None:
    """Why `user` may not file a change request (None when they may): only requesters file changes."""
    if not has_role(user, Role.REQUESTER):
        return NotPermitted("Only requesters file change requests.")
    return None


def author_refusal(user: User, change: ChangeRequest, *, act: str) -> NotPermitted | None:
    """Only the change's author, while still a requester, works on its content (edit, submit, attach evidence)."""
    if change.author_id != user.pk:
        return NotPermitted(f"Only the author of this change may {act}; you are not its author.")
    if not has_role(user, Role.REQUESTER):
        return NotPermitted(f"Only the author of this change may {act}, and only while holding the requester role.")
    return None


def _status_label(change: ChangeRequest) -> str:
    return str(change.get_status_display()).lower()


def change_edit_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not edit the change as it stands (None when they may): the author, while it is editable."""
    refusal = author_refusal(user, change, act="edit it")
    if refusal is not None:
        return refusal
    if change.status not in CHANGE_EDITABLE:
        return Conflict(f"A change that is {_status_label(change)} can no longer be edited.", code="not_editable")
    return None


def change_submit_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not submit the change now (None when they may): the author, a draft or a change sent back
    and edited since. Whether its content is ready for review is checked by the service (field errors)."""
    refusal = author_refusal(user, change, act="submit it")
    if refusal is not None:
        return refusal
    if change.status not in (ChangeStatus.DRAFT, ChangeStatus.CHANGES_REQUESTED):
        return Conflict(f"A change that is {_status_label(change)} cannot be submitted.", code="invalid_transition")
    if (
        change.status == ChangeStatus.CHANGES_REQUESTED
        and change.approvals.filter(decision=ApprovalDecision.CHANGES_REQUESTED, revision=change.revision).exists()
    ):
        return Conflict("Changes were requested on this revision; edit the change before resubmitting.")
    return None


def _approved_refusal(change: ChangeRequest) -> DomainError | None:
    """The approvals, re-read, still satisfy the policy for the change as it stands."""
    progress = change_policy_progress(change)
    if not progress.satisfied:
        return Conflict(f"The approvals no longer satisfy the policy: {progress.summary()}.", code="not_approved")
    return None


def change_review_due_at(change: ChangeRequest) -> datetime | None:
    """When reviewers must have decided the change in review by (its policy's deadline); None when not in review."""
    if change.status not in CHANGE_REVIEWABLE or change.review_started_at is None:
        return None
    policy = policy_for(change)
    minutes = policy.review_deadline_minutes if policy is not None else DEFAULT_REVIEW_DEADLINE_MINUTES
    return change.review_started_at + timedelta(minutes=minutes)


def change_approval_expires_at(change: ChangeRequest) -> datetime | None:
    """When the approval of an approved or scheduled change lapses: when its requested window closes, or after the
    policy's validity, whichever comes first; None when the change is not (or no longer) approved."""
    if change.status not in (ChangeStatus.APPROVED, ChangeStatus.SCHEDULED) or change.approved_at is None:
        return None
    policy = policy_for(change)
    minutes = policy.approval_valid_minutes if policy is not None else DEFAULT_APPROVAL_VALID_MINUTES
    return min(change.requested_window_end, change.approved_at + timedelta(minutes=minutes))


def change_freezes(change: ChangeRequest, start: datetime, end: datetime) -> list[ChangeFreeze]:
    """Freezes overlapping [start, end) that apply to the change: fleet-wide ones, and those of a region it targets."""
    regions = scope_devices(change.scope).values("region_id")
    return list(
        ChangeFreeze.objects.filter(starts_at__lt=end, ends_at__gt=start)
        .filter(Q(region__isnull=True) | Q(region_id__in=regions))
        .select_related("region", "owner")
        .order_by("starts_at", "id")
    )


def freeze_exempt(change: ChangeRequest) -> bool:
    """An emergency change passes freezes once a security officer has approved its current revision."""
    if change.change_type != ChangeType.EMERGENCY:
        return False
    return any(Role.SECURITY_OFFICER in approval.roles_held for approval in valid_approvals(change))


def _freeze_words(freeze: ChangeFreeze) -> str:
    where = f"in region {freeze.region.code}" if freeze.region is not None else "fleet-wide"
    return (
        f"Change freeze {where} until {freeze.ends_at:%Y-%m-%d %H:%M} UTC ({freeze.reason}; owner "
        f"{freeze.owner.get_username()})"
    )


def freeze_refusal(change: ChangeRequest, *, at: datetime) -> DomainError | None:
    """Why the change may not start (or open a wave) at `at` because of a freeze (None when it may)."""
    if freeze_exempt(change):
        return None
    frozen = change_freezes(change, at, at + timedelta(microseconds=1))
    if not frozen:
        return None
    return Conflict(
        f"{_freeze_words(frozen[0])}. An emergency change passes with a security officer's approval.",
        code="change_freeze",
    )


def freeze_end(change: ChangeRequest, *, at: datetime) -> tuple[datetime, str] | None:
    """When the freezes holding the change at `at` are over (chained freezes count as one), and the first's words."""
    if freeze_exempt(change):
        return None
    frozen = change_freezes(change, at, at + timedelta(microseconds=1))
    if not frozen:
        return None
    end = max(f.ends_at for f in frozen)
    while True:
        following = [f for f in change_freezes(change, end, end + timedelta(microseconds=1)) if f.ends_at > end]
        if not following:
            return end, _freeze_words(frozen[0])
        end = max(f.ends_at for f in following)


def window_frozen_refusal(change: ChangeRequest) -> DomainError | None:
    """A change whose whole requested window is frozen could never start: refused at submission (emergencies pass
    here, since their security officer approval can only come after)."""
    if change.change_type == ChangeType.EMERGENCY:
        return None
    start, end = change.requested_window_start, change.requested_window_end
    held = freeze_end(change, at=start)
    if held is not None and held[0] >= end:
        return Conflict(f"The whole requested window is frozen: {held[1]}.", code="change_freeze")
    return None


def _lapsed_refusal(change: ChangeRequest, now: datetime) -> DomainError | None:
    """An expired approval counts for nothing, even before the change's timer has marked it lapsed."""
    expires = change_approval_expires_at(change)
    if expires is not None and now >= expires:
        return Conflict(
            f"The approval lapsed at {expires:%Y-%m-%d %H:%M} UTC; the change needs a fresh decision.",
            code="approval_lapsed",
        )
    return None


def change_schedule_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not schedule (or re-schedule) the change (None when they may): an operator other than the
    author schedules an approved change whose approvals still satisfy the policy and have not lapsed. The start
    time is checked by the service."""
    refusal = operator_not_author_refusal(
        user, author_id=change.author_id, act="schedule a change", act_as_other="schedule it"
    )
    if refusal is not None:
        return refusal
    if change.status not in (ChangeStatus.APPROVED, ChangeStatus.SCHEDULED):
        return Conflict(f"The change is {_status_label(change)}, not approved.", code="not_approved")
    return _approved_refusal(change) or _lapsed_refusal(change, timezone.now())


def change_start_refusal(user: User, change: ChangeRequest, *, now: datetime | None = None) -> DomainError | None:
    """Why `user` may not start the change's rollout now (None when they may): an operator other than the author,
    an approved (or scheduled) change still satisfying its policy, inside its window, at or after its scheduled
    start, without a rollout yet. `rollouts.rollout_services.rollout_start` raises what this returns and then
    checks, under its lock, what only the start itself can (rollback plan, overlapping rollouts)."""
    refusal = operator_not_author_refusal(
        user, author_id=change.author_id, act="start a rollout", act_as_other="start its rollout"
    )
    if refusal is not None:
        return refusal
    if change.status not in (ChangeStatus.APPROVED, ChangeStatus.SCHEDULED):
        return Conflict(
            f"The change is {_status_label(change)}; only approved changes are rolled out.", code="not_approved"
        )
    not_approved = _approved_refusal(change)
    if not_approved is not None:
        return not_approved
    now = now or timezone.now()
    lapsed = _lapsed_refusal(change, now)
    if lapsed is not None:
        return lapsed
    if not change.requested_window_start <= now < change.requested_window_end:
        return Conflict(
            f"Outside the change's requested window ({change.requested_window_start:%Y-%m-%d %H:%M} to "
            f"{change.requested_window_end:%Y-%m-%d %H:%M} UTC).",
            code="outside_window",
        )
    if change.scheduled_start and now < change.scheduled_start:
        return Conflict(f"The change is scheduled to start at {change.scheduled_start:%Y-%m-%d %H:%M} UTC.")
    frozen = freeze_refusal(change, at=now)
    if frozen is not None:
        return frozen
    # Through the ORM relation: change control does not import the rollouts app.
    if ChangeRequest.objects.filter(pk=change.pk, rollout__isnull=False).exists():
        return Conflict("This change already has a rollout.", code="already_started")
    return None


def _reviewer_refusal(user: User, change: ChangeRequest, what: str) -> NotPermitted | None:
    """Reviews of a change after the fact are carried out by a CAB member or the security officer, never its author."""
    if change.author_id == user.pk:
        return NotPermitted(f"The author cannot carry out the {what} of their own change.")
    if not has_role(user, Role.CAB_MEMBER, Role.SECURITY_OFFICER):
        return NotPermitted(f"Only CAB members and the security officer carry out the {what}.")
    return None


def retrospective_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not record the retrospective review an approved emergency change owes (None when they may)."""
    refusal = _reviewer_refusal(user, change, "retrospective review")
    if refusal is not None:
        return refusal
    if change.retrospective_due_at is None:
        return Conflict("Only approved emergency changes owe a retrospective review.")
    if change.retrospective_done_at is not None:
        return Conflict("The retrospective review is already recorded.")
    return None


def post_review_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not record the post-implementation review of the change (None when they may)."""
    refusal = _reviewer_refusal(user, change, "post-implementation review")
    if refusal is not None:
        return refusal
    if change.status not in (ChangeStatus.COMPLETED, ChangeStatus.ROLLED_BACK):
        return Conflict("Only completed or rolled-back changes get a post-implementation review.")
    if change.post_review_done_at is not None:
        return Conflict("The post-implementation review is already recorded.")
    return None


ROLLOUT_RUNNING_MESSAGE = "Its rollout is running: abort the rollout (which closes the change) instead."


def change_cancel_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not cancel the change as it stands (None when they may); the service and the page both ask.

    The author (still a requester) or, once it is submitted, a CAB member may cancel until the rollout starts; once
    it runs, cancelling the change would leave the rollout offering the release, so only aborting the rollout
    closes the change.
    """
    if author_refusal(user, change, act="cancel it") is not None:
        if not has_role(user, Role.CAB_MEMBER):
            return NotPermitted("Only the author or a CAB member may cancel a change.")
        if change.status == ChangeStatus.DRAFT:
            # A draft is its author's alone (nobody else can even see it) until it is submitted.
            return NotPermitted("Only the author may cancel a draft.")
    if change.status in CHANGE_ROLLOUT_RUNNING:
        return Conflict(ROLLOUT_RUNNING_MESSAGE, code="rollout_running")
    if change.status not in CHANGE_CANCELLABLE:
        return Conflict(
            f"A change that is {change.get_status_display().lower()} cannot be cancelled.", code="invalid_transition"
        )
    return None


def evidence_add_refusal(user: User, change: ChangeRequest) -> DomainError | None:
    """Why `user` may not attach test evidence to the change as it stands (None when they may); service and page ask."""
    refusal = author_refusal(user, change, act="attach test evidence")
    if refusal is not None:
        return refusal
    return change_edit_refusal(user, change)


@dataclass(frozen=True)
class WavePreview:
    """How many devices one wave of a plan would take from a scope, as planned before the rollout starts."""

    index: int
    name: str
    cohort: Cohort
    devices: int
    promotion: str


def plan_wave_preview(plan: RolloutPlan, scope: TargetScope) -> list[WavePreview]:
    """Devices per wave for a plan over a scope, by the rollout's sizing rule.

    Uses `approvals.plans.wave_sizes`, the arithmetic the rollout itself plans its waves with.
    """
    targets = scope_devices(scope)
    pilots = targets.filter(tags__name="pilot").values("pk").distinct().count()
    sizes = wave_sizes(plan.waves, total=targets.count(), pilots=pilots)
    return [
        WavePreview(index, wave.name, wave.cohort, size, wave.promotion)
        for index, (wave, size) in enumerate(zip(plan.waves, sizes, strict=True))
    ]


def change_records(change: ChangeRequest, *, rollout_id: int | None = None) -> QuerySet[DecisionRecord]:
    """Every decision record about the change, its approvals and (if started) its rollout; unordered."""
    approval_ids = [str(pk) for pk in change.approvals.values_list("pk", flat=True)]
    about = Q(object_type="change", object_id=str(change.pk)) | Q(object_type="approval", object_id__in=approval_ids)
    if rollout_id is not None:
        about |= Q(object_type="rollout", object_id=str(rollout_id))
    return DecisionRecord.objects.filter(about)
