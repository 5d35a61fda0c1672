"""Page-level reads for the change pages: the CAB queue rows, the change page's facts and its conflicts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.contrib.auth.models import User
from django.db.models import Case, IntegerField, Q, QuerySet, Value, When
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.choices import (
    CHANGE_PENDING_REVIEW,
    CHANGE_TERMINAL,
    RISK_ORDER,
    ApprovalDecision,
    ChangeStatus,
    ChangeType,
)
from approvals.models import Approval, ChangeRequest, RiskQuestion
from approvals.plan_warnings import PlanWarning, change_plan_warnings, changes_sharing_targets
from approvals.policy import ROLE_LABELS
from approvals.revision_diff import RevisionDiff, revision_diffs
from approvals.risk import RiskAssessment, risk_assess
from approvals.selectors import (
    WavePreview,
    change_approval_expires_at,
    change_cancel_refusal,
    change_edit_refusal,
    change_freezes,
    change_history,
    change_list_for_user,
    change_plan_hash,
    change_policy_progress,
    change_release_sha256,
    change_review_due_at,
    change_schedule_refusal,
    change_start_refusal,
    change_submit_refusal,
    decision_refusal,
    evidence_add_refusal,
    plan_wave_preview,
    post_review_refusal,
    retrospective_refusal,
)
from approvals.timers import review_clock, review_step_key
from devices.scope import scope_devices, scope_summary
from ota_project.errors import DomainError, InvalidInput, NotPermitted
from ota_project.roles import APPROVER_ROLES, CHANGE_READER_ROLES, has_role

# Statuses whose rollout holds (or is about to hold) devices: a change overlapping them competes for vehicles.
ACTIVE_ROLLOUT_STATUSES = (ChangeStatus.SCHEDULED, ChangeStatus.IMPLEMENTING)
DECISIONS = (ApprovalDecision.APPROVED, ApprovalDecision.REJECTED, ApprovalDecision.CHANGES_REQUESTED)


def _risk_rank() -> Case:
    return Case(
        *[When(risk_level=level, then=Value(i)) for i, level in enumerate(RISK_ORDER)],
        output_field=IntegerField(),
    )


def _search_filter(search: str) -> Q:
    """Every word must match the title, the release version or the author; "CR-12" or "12" also finds change 12."""
    condition = Q()
    for word in search.split()[:8]:
        number = word.upper().removeprefix("CR-").removeprefix("#")
        either = Q(title__icontains=word) | Q(release__version__icontains=word) | Q(author__username__icontains=word)
        if number.isdigit() and len(number) < 19:
            either |= Q(pk=int(number))
        condition &= either
    return condition


def queue_changes(
    user: User, *, mine: bool, status: str = "", change_type: str = "", risk_level: str = "", search: str = ""
) -> QuerySet[ChangeRequest]:
    """The queue page's rows, riskiest first, then by requested window: for reviewers the pending changes, for
    readers (auditors, operators) every change in any status, with `mine` the user's own in any status; requesters
    who neither review nor read only ever see their own changes."""
    changes = change_list_for_user(user)
    reviewer = has_role(user, *APPROVER_ROLES)
    if mine or not (reviewer or has_role(user, *CHANGE_READER_ROLES)):
        changes = changes.filter(author=user)
    if status:
        changes = changes.filter(status=status)
    elif reviewer and not mine:
        changes = changes.filter(status__in=CHANGE_PENDING_REVIEW)
    if change_type:
        changes = changes.filter(change_type=change_type)
    if risk_level:
        changes = changes.filter(risk_level=risk_level)
    if search.strip():
        changes = changes.filter(_search_filter(search))
    return changes.annotate(risk_rank=_risk_rank()).order_by("-risk_rank", "requested_window_start", "id")


@dataclass(frozen=True)
class QueueRow:
    """One change in the queue with what a reviewer scans for: its policy progress and scope size."""

    change: ChangeRequest
    progress: str
    devices: int
    timers: ChangeTimers


def queue_rows(changes: list[ChangeRequest]) -> list[QueueRow]:
    """Policy progress in words (only while it is being reviewed), the targeted device count and the change's
    timers (review deadline, overdue, a lapsed approval) per change."""
    rows = []
    for change in changes:
        if change.status in CHANGE_PENDING_REVIEW:
            progress = change_policy_progress(change).summary()
        elif change.status == ChangeStatus.DRAFT:
            progress = "not submitted"
        else:
            progress = change.get_status_display().lower()
        rows.append(
            QueueRow(
                change, progress, scope_devices(change.scope).count(), change_timers_shown(change, with_freezes=False)
            )
        )
    return rows


@dataclass(frozen=True)
class ChangeTimers:
    """What the change's timers mean for the people looking at it (change page, CAB queue)."""

    review_due_at: datetime | None = None
    review_overdue: bool = False
    escalated_to: str = ""
    approval_expires_at: datetime | None = None
    lapsed_at: datetime | None = None
    lapse_reason: str = ""
    scheduled_start: datetime | None = None
    scheduled_by: str = ""
    held_at: datetime | None = None
    held_reason: str = ""
    freezes: tuple[str, ...] = ()
    post_review_due_at: datetime | None = None


def change_timers_shown(
    change: ChangeRequest, *, now: datetime | None = None, with_freezes: bool = True
) -> ChangeTimers:
    """The change's deadlines and marks as of `now`: computed from the same rules its workflow and Start use."""
    now = now or timezone.now()
    due = change_review_due_at(change)
    clock = review_clock(change)
    escalated = ""
    if clock is not None:
        record = DecisionRecord.objects.filter(step_key=review_step_key(change, clock, "escalation")).first()
        if record is not None and isinstance(record.after, dict):
            escalated = ROLE_LABELS.get(str(record.after.get("escalated_to", "")), "")
    in_review = change.status in CHANGE_PENDING_REVIEW
    lapsed = in_review and change.approval_lapsed_at is not None
    held = change.status == ChangeStatus.APPROVED and change.start_held_at is not None
    return ChangeTimers(
        review_due_at=due,
        review_overdue=due is not None and now >= due,
        escalated_to=escalated,
        approval_expires_at=change_approval_expires_at(change),
        lapsed_at=change.approval_lapsed_at if lapsed else None,
        lapse_reason=change.approval_lapse_reason if lapsed else "",
        scheduled_start=change.scheduled_start if change.status == ChangeStatus.SCHEDULED else None,
        scheduled_by=change.scheduled_by.get_username()
        if change.status == ChangeStatus.SCHEDULED and change.scheduled_by is not None
        else "",
        held_at=change.start_held_at if held else None,
        held_reason=change.start_held_reason if held else "",
        post_review_due_at=change.post_review_due_at if change.post_review_done_at is None else None,
        freezes=tuple(str(freeze) for freeze in change_freezes(change, now, change.requested_window_end))
        if with_freezes and change.status not in CHANGE_TERMINAL and change.requested_window_end > now
        else (),
    )


@dataclass(frozen=True)
class ApprovalRow:
    """An approval as the change page lists it, with whether it still counts and why not."""

    approval: Approval
    roles: str
    state: str
    counts: bool


def approval_rows(change: ChangeRequest) -> list[ApprovalRow]:
    """Every decision so far, newest revision first, each saying whether it counts for the current revision."""
    progress = change_policy_progress(change)
    counted = {voter for voters in progress.filled.values() for voter in voters}
    release_sha256, plan_hash = change_release_sha256(change), change_plan_hash(change)
    rows = []
    for approval in change.approvals.select_related("approver").order_by("-revision", "created_at", "id"):
        roles = ", ".join(ROLE_LABELS.get(role, role) for role in approval.roles_held)
        counts = False
        if approval.voided_at is not None:
            state = f"void: {approval.void_reason}" if approval.void_reason else "void"
        elif approval.revision != change.revision:
            state = f"given on revision {approval.revision}; the change is at revision {change.revision}"
        elif approval.release_sha256 != release_sha256 or approval.plan_hash != plan_hash:
            state = "bound to a different release image or plan"
        elif approval.decision != ApprovalDecision.APPROVED:
            state = "current revision"
        elif approval.approver_id in counted:
            state, counts = "counts toward the policy", True
        else:
            state = "valid, but fills no open role slot"
        rows.append(ApprovalRow(approval, roles, state, counts))
    return rows


@dataclass(frozen=True)
class OverlappingChange:
    """Another change whose rollout holds or will hold some of the same vehicles."""

    change: ChangeRequest
    shared_devices: int
    window_overlaps: bool


@dataclass(frozen=True)
class BlackoutConflict:
    """A blackout window of the plan that falls inside the requested window."""

    start: datetime
    end: datetime
    reason: str


@dataclass(frozen=True)
class ChangeConflicts:
    changes: list[OverlappingChange] = field(default_factory=list)
    blackouts: list[BlackoutConflict] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.changes or self.blackouts)


def change_conflicts(change: ChangeRequest) -> ChangeConflicts:
    """Scheduled or implementing changes that target some of the same devices, and the plan's blackout windows
    that overlap the requested window (the rollout will wait them out)."""
    overlapping = [
        OverlappingChange(item.change, item.shared_devices, item.window_overlaps)
        for item in changes_sharing_targets(
            change.scope,
            window_start=change.requested_window_start,
            window_end=change.requested_window_end,
            exclude_change_id=change.pk,
            statuses=ACTIVE_ROLLOUT_STATUSES,
        )
        if item.shared_devices
    ]
    blackouts = []
    try:
        plan = change.plan
    except InvalidInput:
        plan = None  # the page says the plan is incomplete (see change_waves)
    for span in plan.blackout_windows if plan else ():
        start, end = span.starts_at, span.ends_at
        if start < change.requested_window_end and change.requested_window_start < end:
            blackouts.append(BlackoutConflict(start, end, span.reason or ""))
    return ChangeConflicts(overlapping, blackouts)


@dataclass(frozen=True)
class AnswerRow:
    """One question of the risk questionnaire with the change's answer and the points it scored."""

    text: str
    answer: Any
    points: int
    computed: bool


def risk_answer_rows(assessment: RiskAssessment) -> list[AnswerRow]:
    """The active questionnaire in order with the answers (requester's and computed) and their points."""
    rows = []
    for question in RiskQuestion.objects.filter(is_active=True).order_by("order", "key"):
        answer = assessment.answers.get(question.key)
        rows.append(
            AnswerRow(question.text, answer, assessment.points.get(question.key, 0), question.source != "requester")
        )
    return rows


@dataclass(frozen=True)
class ChangeActions:
    """What the viewer may do on the change page, and in words why not where it matters.

    Every `may_*` is "the `<action>_refusal` rule the service raises returned None", and every `*_refusal` is
    that rule's message when it is worth showing; the page decides nothing on its own.
    """

    decisions: dict[str, str | None]
    may_edit: bool
    may_submit: bool
    may_cancel: bool
    may_schedule: bool
    may_start_rollout: bool
    may_add_evidence: bool
    # Why a viewer who may otherwise take the action cannot now; None when they can or may not at all.
    cancel_refusal: str | None
    evidence_refusal: str | None
    submit_refusal: str | None
    schedule_refusal: str | None
    start_rollout_refusal: str | None
    may_review_retrospective: bool
    may_review_post_implementation: bool
    is_author: bool

    @property
    def may_decide(self) -> bool:
        return any(reason is None for reason in self.decisions.values())

    @property
    def decision_refusal(self) -> str | None:
        """The reason shown when the viewer may take none of the decisions (the approve refusal says most)."""
        if self.may_decide:
            return None
        return self.decisions[ApprovalDecision.APPROVED]


def _blocked_reason(change: ChangeRequest, refusal: DomainError | None) -> str | None:
    """A state refusal worth showing: the viewer holds the right, the change is still open, the status forbids it."""
    if refusal is None or isinstance(refusal, NotPermitted) or change.status in CHANGE_TERMINAL:
        return None
    return refusal.message


def change_actions(user: User, change: ChangeRequest) -> ChangeActions:
    """The page's actions for this viewer, each from the `<action>_refusal` rule its service raises, so the page
    never offers what the service would refuse nor hides what it would accept."""
    cancel = change_cancel_refusal(user, change)
    evidence = evidence_add_refusal(user, change)
    submit = change_submit_refusal(user, change)
    schedule = change_schedule_refusal(user, change)
    start = change_start_refusal(user, change)
    decisions = {}
    for decision in DECISIONS:
        refusal = decision_refusal(user, change, decision)
        decisions[str(decision)] = refusal.message if refusal else None
    return ChangeActions(
        decisions=decisions,
        may_edit=change_edit_refusal(user, change) is None,
        may_submit=submit is None,
        may_cancel=cancel is None,
        may_schedule=schedule is None,
        may_start_rollout=start is None,
        may_add_evidence=evidence is None,
        cancel_refusal=_blocked_reason(change, cancel),
        evidence_refusal=_blocked_reason(change, evidence),
        # Submitting is only worth explaining where it is the next step (a change sent back, not yet edited).
        submit_refusal=_blocked_reason(change, submit) if change.status == ChangeStatus.CHANGES_REQUESTED else None,
        # Scheduling and starting are explained only where they are the next step (an approved change).
        schedule_refusal=_blocked_reason(change, schedule) if change.status == ChangeStatus.APPROVED else None,
        start_rollout_refusal=_blocked_reason(change, start)
        if change.status in (ChangeStatus.APPROVED, ChangeStatus.SCHEDULED)
        else None,
        may_review_retrospective=retrospective_refusal(user, change) is None,
        may_review_post_implementation=post_review_refusal(user, change) is None,
        is_author=change.author_id == user.pk,
    )


def change_waves(change: ChangeRequest) -> tuple[list[WavePreview], str]:
    """Devices per wave of the change's plan over its scope, or an explanation when the plan cannot be sized."""
    try:
        plan = change.plan
    except InvalidInput:
        plan = None
    if plan is None:
        return [], "The rollout plan is incomplete; the author must fix it before it can be reviewed."
    return plan_wave_preview(plan, change.scope), ""


@dataclass(frozen=True)
class ChangePage:
    """Everything the change page shows besides the change itself."""

    scope: dict[str, Any]
    assessment: RiskAssessment
    answers: list[AnswerRow]
    reassessed_differs: bool
    waves: list[WavePreview]
    waves_problem: str
    progress: str
    progress_satisfied: bool
    approvals: list[ApprovalRow]
    conflicts: ChangeConflicts
    history: list[DecisionRecord]
    evidence: list[Any]
    actions: ChangeActions
    compatible_models: list[str]
    emergency: bool
    warnings: list[PlanWarning]
    revisions: list[RevisionDiff]
    timers: ChangeTimers


def change_page(user: User, change: ChangeRequest) -> ChangePage:
    """Gather the change page: scope breakdown, risk, waves, approvals, conflicts, timeline and actions."""
    summary = scope_summary(change.scope)
    assessment = risk_assess(answers=change.risk_answers, scope_summary=summary)
    waves, waves_problem = change_waves(change)
    progress = change_policy_progress(change)
    reviewed = change.status not in (ChangeStatus.DRAFT,) and change.status not in CHANGE_TERMINAL
    history = list(change_history(change).select_related("actor"))
    return ChangePage(
        scope=summary,
        assessment=assessment,
        answers=risk_answer_rows(assessment),
        reassessed_differs=reviewed
        and (assessment.level != change.risk_level or assessment.score != change.risk_score),
        waves=waves,
        waves_problem=waves_problem,
        progress=progress.summary(),
        progress_satisfied=progress.satisfied,
        approvals=approval_rows(change),
        conflicts=change_conflicts(change),
        history=history,
        evidence=list(change.evidence.select_related("uploaded_by")),
        actions=change_actions(user, change),
        compatible_models=sorted(change.release.hardware_models.values_list("name", flat=True)),
        emergency=change.change_type == ChangeType.EMERGENCY,
        warnings=change_plan_warnings(change) if waves else [],
        revisions=revision_diffs(history),
        timers=change_timers_shown(change),
    )
