"""The review timers of a change: reminders to the reviewers who may still decide, escalation at the deadline, and
the dates ChangeWorkflow waits for (workflows/change.py).

Everything is computed from the database at a given `now` (the Temporal server's clock, see
workflows/change_activities.py): a timer that fires early, late or twice, or a forged call, does only what the
database says is due, and each step is recorded once (its step key names the change, the review round and the
step). The deadlines are data (ApprovalPolicy.review_deadline_minutes, reminder_every_minutes,
approval_valid_minutes) an administrator edits.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db.models import Q

from approvals.audit.models import DecisionRecord
from approvals.audit.records import record_decision
from approvals.choices import CHANGE_TERMINAL, ApprovalDecision, ChangeStatus, ChangeType
from approvals.models import ChangeRequest
from approvals.notify import TIMER_ACTOR, notify_people, users_with_roles
from approvals.policy import ROLE_LABELS
from approvals.selectors import (
    change_approval_expires_at,
    change_policy_progress,
    change_review_due_at,
    decision_refusal,
    policy_for,
)
from ota_project.db import atomic_with_retry
from ota_project.roles import Role, roles_of
from workflows.change_types import ChangeState


@dataclass(frozen=True)
class ReviewClock:
    """The review round of a change in review: when it began, its reminders and its deadline."""

    started_at: datetime
    due_at: datetime
    reminder_every: timedelta | None

    @property
    def round_key(self) -> str:
        return f"{int(self.started_at.timestamp())}"

    def reminder_index(self, now: datetime) -> int:
        """The number of the latest reminder due at `now` (0: none yet); reminders stop at the deadline."""
        if self.reminder_every is None or now < self.started_at:
            return 0
        index = int((min(now, self.due_at) - self.started_at) / self.reminder_every)
        if index and self.started_at + index * self.reminder_every >= self.due_at:
            index -= 1  # the reminder that would coincide with the deadline is the escalation
        return index

    def reminder_at(self, index: int) -> datetime | None:
        if self.reminder_every is None:
            return None
        when = self.started_at + index * self.reminder_every
        return when if when < self.due_at else None


def review_clock(change: ChangeRequest) -> ReviewClock | None:
    """The change's review round, or None when it is not in review."""
    due = change_review_due_at(change)
    if due is None or change.review_started_at is None:
        return None
    policy = policy_for(change)
    every = policy.reminder_every_minutes if policy is not None else 0
    return ReviewClock(change.review_started_at, due, timedelta(minutes=every) if every else None)


def review_step_key(change: ChangeRequest, clock: ReviewClock, step: str) -> str:
    return f"change:{change.pk}:review:{clock.round_key}:{step}"


def _recorded(key: str) -> bool:
    return DecisionRecord.objects.filter(step_key=key).exists()


def reviewer_may_still_decide(person: User, change: ChangeRequest, missing: Iterable[str] | None = None) -> bool:
    """Whether `person` holds a role the policy still misses and may approve the change now (the service's rule):
    whom the reminders go to, and whose "needs you now" page lists the change."""
    if missing is None:
        missing = change_policy_progress(change).missing
    return bool(roles_of(person) & set(missing)) and decision_refusal(person, change, ApprovalDecision.APPROVED) is None


def reviewers_who_may_decide(change: ChangeRequest) -> list[User]:
    """People holding a role the policy still misses who may approve the change now (the rule the service applies)."""
    missing = change_policy_progress(change).missing
    if not missing:
        return []
    return [person for person in users_with_roles(*missing) if reviewer_may_still_decide(person, change, missing)]


def escalation_role(change: ChangeRequest) -> str:
    """Overdue emergencies go to the emergency CAB, everything else to the CAB chair."""
    return Role.EMERGENCY_CAB if change.change_type == ChangeType.EMERGENCY else Role.CAB_CHAIR


def _policy_name(change: ChangeRequest) -> str:
    return f"{TIMER_ACTOR} for approval policy {change.change_type}/{change.risk_level}"


@atomic_with_retry()
def change_review_timers_fire(*, change_id: int, now: datetime) -> list[str]:
    """Send the reminder and the escalation that are due at `now` and not yet recorded; returns what it did."""
    change = ChangeRequest.objects.select_for_update(of=("self",)).select_related("release__artifact").get(pk=change_id)
    clock = review_clock(change)
    if clock is None:
        return []
    done: list[str] = []
    due_text = f"{clock.due_at:%Y-%m-%d %H:%M} UTC"
    progress = change_policy_progress(change)
    if now >= clock.due_at:
        key = review_step_key(change, clock, "escalation")
        if not _recorded(key):
            role = escalation_role(change)
            notified = notify_people(
                users_with_roles(role),
                subject=f"Overdue review: CR-{change.pk} {change.title}",
                body=(
                    f"Change CR-{change.pk} ({change.title}, {change.change_type}, {change.risk_level} risk) was due "
                    f"to be decided by {due_text} and is still {change.get_status_display().lower()} "
                    f"({progress.summary()}). It is escalated to you as {ROLE_LABELS.get(role, role)}."
                ),
            )
            record_decision(
                actor=None,
                action="change.review_escalated",
                object_type="change",
                object_id=change.pk,
                revision=change.revision,
                after={"escalated_to": role, "notified": notified, "due_at": clock.due_at.isoformat()},
                reason=f"Review deadline {due_text} passed: {progress.summary()}.",
                system_actor=_policy_name(change),
                step_key=key,
            )
            done.append("escalation")
        return done
    index = clock.reminder_index(now)
    if index:
        key = review_step_key(change, clock, f"reminder:{index}")
        if not _recorded(key):
            reviewers = reviewers_who_may_decide(change)
            notified = notify_people(
                reviewers,
                subject=f"Review reminder: CR-{change.pk} {change.title}",
                body=(
                    f"Change CR-{change.pk} ({change.title}, {change.change_type}, {change.risk_level} risk) waits "
                    f"for your decision ({progress.summary()}). The review deadline is {due_text}; after it the "
                    f"change escalates to the {ROLE_LABELS.get(escalation_role(change))}."
                ),
            )
            record_decision(
                actor=None,
                action="change.review_reminder",
                object_type="change",
                object_id=change.pk,
                revision=change.revision,
                after={"reminder": index, "notified": notified, "due_at": clock.due_at.isoformat()},
                reason=f"Reminder {index} before the review deadline {due_text}.",
                system_actor=_policy_name(change),
                step_key=key,
            )
            done.append(f"reminder {index}")
    return done


@dataclass(frozen=True)
class FollowUpReview:
    """A review the change owes after the fact: an emergency's retrospective, or the post-implementation review."""

    kind: str  # "retrospective" | "post_review"
    started_at: datetime
    due_at: datetime

    @property
    def label(self) -> str:
        return "retrospective review" if self.kind == "retrospective" else "post-implementation review"

    @property
    def reminder_at(self) -> datetime:
        """A day before it is due (half-way for shorter terms)."""
        return self.due_at - min(timedelta(days=1), (self.due_at - self.started_at) / 2)

    def step_key(self, change: ChangeRequest, step: str) -> str:
        return f"change:{change.pk}:{self.kind}:{int(self.due_at.timestamp())}:{step}"


def follow_up_reviews(change: ChangeRequest) -> list[FollowUpReview]:
    """The reviews the change still owes (none once recorded)."""
    owed = []
    if change.retrospective_due_at is not None and change.retrospective_done_at is None:
        started = change.approved_at or change.retrospective_due_at - timedelta(days=1)
        owed.append(FollowUpReview("retrospective", started, change.retrospective_due_at))
    if (
        change.post_review_due_at is not None
        and change.post_review_done_at is None
        and change.status in (ChangeStatus.COMPLETED, ChangeStatus.ROLLED_BACK)
    ):
        policy = policy_for(change)
        days = policy.post_review_days if policy is not None else 5
        owed.append(
            FollowUpReview("post_review", change.post_review_due_at - timedelta(days=days), change.post_review_due_at)
        )
    return owed


@atomic_with_retry()
def change_follow_up_reviews_fire(*, change_id: int, now: datetime) -> list[str]:
    """Remind (a day before) and escalate (when due) the retrospective and post-implementation reviews still owed."""
    change = ChangeRequest.objects.select_for_update(of=("self",)).select_related("author").get(pk=change_id)
    done: list[str] = []
    for review in follow_up_reviews(change):
        due_text = f"{review.due_at:%Y-%m-%d %H:%M} UTC"
        escalation_key = review.step_key(change, "escalation")
        if now >= review.due_at:
            if _recorded(escalation_key):
                continue
            notified = notify_people(
                users_with_roles(Role.CAB_CHAIR),
                subject=f"Overdue {review.label}: CR-{change.pk} {change.title}",
                body=(
                    f"The {review.label} of change CR-{change.pk} ({change.title}) was due by {due_text} and is not "
                    "recorded. It is escalated to you as CAB chair."
                    + (
                        f" Until it is done, {change.author.get_username()} files no further emergency change."
                        if review.kind == "retrospective"
                        else ""
                    )
                ),
            )
            record_decision(
                actor=None,
                action=f"change.{review.kind}_escalated",
                object_type="change",
                object_id=change.pk,
                revision=change.revision,
                after={"escalated_to": Role.CAB_CHAIR, "notified": notified, "due_at": review.due_at.isoformat()},
                reason=f"The {review.label} was due by {due_text}.",
                system_actor=f"{TIMER_ACTOR} for the CAB",
                step_key=escalation_key,
            )
            done.append(f"{review.kind} escalation")
        elif now >= review.reminder_at:
            key = review.step_key(change, "reminder")
            if _recorded(key):
                continue
            reviewers = [
                person
                for person in users_with_roles(Role.CAB_MEMBER, Role.SECURITY_OFFICER)
                if person.pk != change.author_id
            ]
            notified = notify_people(
                [*reviewers, change.author],
                subject=f"{review.label.capitalize()} due: CR-{change.pk} {change.title}",
                body=(
                    f"The {review.label} of change CR-{change.pk} ({change.title}) is due by {due_text}. A CAB member "
                    "or the security officer (not its author) records it on the change page; after the due time "
                    "it escalates to the CAB chair."
                ),
            )
            record_decision(
                actor=None,
                action=f"change.{review.kind}_reminder",
                object_type="change",
                object_id=change.pk,
                revision=change.revision,
                after={"notified": notified, "due_at": review.due_at.isoformat()},
                reason=f"The {review.label} is due by {due_text}.",
                system_actor=f"{TIMER_ACTOR} for the CAB",
                step_key=key,
            )
            done.append(f"{review.kind} reminder")
    return done


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def change_timer_state(*, change_id: int, now: datetime) -> ChangeState:
    """The change as its workflow sees it: status, risk, type, due dates and the next step still owed after `now`."""
    change = ChangeRequest.objects.get(pk=change_id)
    review_due = change_review_due_at(change)
    expires = change_approval_expires_at(change)
    scheduled = change.scheduled_start if change.status == ChangeStatus.SCHEDULED else None
    owed: list[tuple[datetime, str]] = []
    clock = review_clock(change)
    if clock is not None:
        if not _recorded(review_step_key(change, clock, "escalation")):
            index = clock.reminder_index(now)
            if index and not _recorded(review_step_key(change, clock, f"reminder:{index}")):
                owed.append((clock.reminder_at(index) or clock.due_at, "reminder"))
            else:
                upcoming = clock.reminder_at(index + 1)
                owed.append((upcoming, "reminder") if upcoming is not None else (clock.due_at, "escalation"))
    if expires is not None:
        owed.append((expires, "approval_expiry"))
    if scheduled is not None:
        owed.append((scheduled, "scheduled_start"))
    reviews = follow_up_reviews(change)
    for review in reviews:
        if _recorded(review.step_key(change, "escalation")):
            continue
        if now < review.reminder_at or not _recorded(review.step_key(change, "reminder")):
            owed.append((review.reminder_at, f"{review.kind}_reminder"))
        else:
            owed.append((review.due_at, f"{review.kind}_escalation"))
    next_at, next_kind = min(owed) if owed else (None, "")
    return ChangeState(
        change_id=change.pk,
        status=change.status,
        revision=change.revision,
        risk_level=change.risk_level,
        change_type=change.change_type,
        review_due_at=_iso(review_due),
        approval_expires_at=_iso(expires),
        scheduled_start=_iso(scheduled),
        next_due_at=_iso(next_at),
        next_due=next_kind,
        # A closed change keeps its workflow while it still owes a review after the fact.
        closed=change.status == ChangeStatus.DRAFT or (change.status in CHANGE_TERMINAL and not reviews),
    )


def change_workflows_ensure() -> list[int]:
    """Start the ChangeWorkflow of every open change that has none running (its start was lost while Temporal was
    down, or it predates this workflow); running ones are left alone (no signal: their history stays small).

    The worker's reconcile loop calls this on start and then every minute; returns the changes reached.
    """
    from workflows.change_client import nudge_change_workflow

    owes_review = Q(retrospective_due_at__isnull=False, retrospective_done_at__isnull=True) | Q(
        status__in=[ChangeStatus.COMPLETED, ChangeStatus.ROLLED_BACK],
        post_review_due_at__isnull=False,
        post_review_done_at__isnull=True,
    )
    open_changes = (
        ChangeRequest.objects.filter(~Q(status__in=[*CHANGE_TERMINAL, ChangeStatus.DRAFT]) | owes_review)
        .order_by("pk")
        .values_list("pk", "status")
    )
    return [pk for pk, status in open_changes if nudge_change_workflow(pk, "reconcile", status=status, signal=False)]
