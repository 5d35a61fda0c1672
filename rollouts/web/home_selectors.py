"""The "needs you now" home: per role, what waits for this person, most urgent first.

Reads only, through the rules that already exist: the approval policy and `decision_refusal` decide which changes
a CAB member may still decide (`approvals.timers.reviewer_may_still_decide`, the reminders' rule), the change
timers give the review deadline and the reviews owed after the fact, the dashboard's `gate_view` and `wave_views`
name a rollout's gate and its soak. A person with several roles gets each section.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.contrib.auth.models import User
from django.db.models import Exists, OuterRef, Q
from django.utils import timezone

from approvals.audit.models import SecurityEvent
from approvals.audit.security_selectors import KindCount, security_event_list, security_event_summary
from approvals.choices import ChangeStatus
from approvals.models import Approval, ChangeRequest
from approvals.selectors import (
    cab_queue,
    change_list_for_user,
    change_policy_progress,
    change_review_due_at,
    post_review_refusal,
    retrospective_refusal,
)
from approvals.timers import follow_up_reviews, reviewer_may_still_decide
from ota_project.roles import APPROVER_ROLES, Role, roles_of
from rollouts.choices import RolloutStatus
from rollouts.models import Rollout
from rollouts.web.page_selectors import GateView, changes_ready_to_start, gate_view, wave_views
from workflows.types import Gate

# How far ahead "starting soon" and "reviews due soon" look.
SOON = timedelta(hours=24)
REVIEW_SOON = timedelta(days=2)
# At most this many rows per list (the full lists are one link away); pending changes examined for the CAB list.
LIST_ROWS = 20
CAB_EXAMINED = 200
SECURITY_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class DecisionDue:
    """A change in review that this person may still decide, with its review deadline."""

    change: ChangeRequest
    due_at: datetime | None
    overdue: bool
    still_needed: str


@dataclass(frozen=True)
class ReviewOwed:
    """A review a change owes after the fact (emergency retrospective, post-implementation review)."""

    change: ChangeRequest
    label: str
    due_at: datetime
    overdue: bool


@dataclass(frozen=True)
class RolloutNeed:
    """A rollout waiting for a person: its gate as the dashboard words it, and since when."""

    rollout: Rollout
    gate: GateView
    kind: str  # "gate" | "held" | "paused" | "halted"
    since: datetime


@dataclass(frozen=True)
class SoakCountdown:
    """The soak of a running rollout's current wave: when its gate may pass."""

    rollout: Rollout
    wave_number: int
    wave_name: str
    ends_at: datetime
    left: timedelta


@dataclass(frozen=True)
class StartingSoon:
    """An approved or scheduled change whose rollout starts (or may start) within SOON."""

    change: ChangeRequest
    starts_at: datetime
    scheduled: bool
    late: bool
    held_reason: str = ""  # its scheduled start was held by the pre-flight (the change is approved again)


@dataclass
class CabSection:
    decisions: list[DecisionDue] = field(default_factory=list)
    more_decisions: bool = False
    reviews: list[ReviewOwed] = field(default_factory=list)


@dataclass
class OperatorSection:
    needs: list[RolloutNeed] = field(default_factory=list)
    soaks: list[SoakCountdown] = field(default_factory=list)
    starting: list[StartingSoon] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.needs or self.soaks or self.starting)


@dataclass
class OversightSection:
    events: list[SecurityEvent] = field(default_factory=list)
    kinds: list[KindCount] = field(default_factory=list)
    overdue_reviews: list[ReviewOwed] = field(default_factory=list)


@dataclass
class RequesterSection:
    sent_back: list[ChangeRequest] = field(default_factory=list)
    drafts: list[ChangeRequest] = field(default_factory=list)


@dataclass
class NeedsYouNow:
    """Every section this person's roles call for (None: the role is not held)."""

    now: datetime
    cab: CabSection | None = None
    operator: OperatorSection | None = None
    oversight: OversightSection | None = None
    requester: RequesterSection | None = None

    @property
    def count(self) -> int:
        """How many items wait in all sections (the page title and the live region say it)."""
        total = 0
        if self.cab is not None:
            total += len(self.cab.decisions) + len(self.cab.reviews)
        if self.operator is not None:
            total += len(self.operator.needs) + len(self.operator.starting)
        if self.oversight is not None:
            total += len(self.oversight.overdue_reviews)
        if self.requester is not None:
            total += len(self.requester.sent_back)
        return total


def decisions_due(user: User, now: datetime) -> tuple[list[DecisionDue], bool]:
    """Changes in review this person may still decide, the earliest review deadline first (then risk, as the queue
    orders them); True as the second value when the list was cut at LIST_ROWS."""
    due: list[DecisionDue] = []
    # Only narrows what the rule below examines (the author, and revisions this person already decided, are refused
    # by decision_refusal too); the rule itself stays reviewer_may_still_decide.
    decided = Approval.objects.filter(change=OuterRef("pk"), approver=user, revision=OuterRef("revision"))
    pending = cab_queue(user).exclude(author=user).exclude(Exists(decided)).select_related("author", "release")
    for change in pending[:CAB_EXAMINED]:
        progress = change_policy_progress(change)
        if not reviewer_may_still_decide(user, change, progress.missing):
            continue
        deadline = change_review_due_at(change)
        due.append(DecisionDue(change, deadline, deadline is not None and deadline <= now, progress.summary()))
    far = now + timedelta(days=36500)
    due.sort(key=lambda item: (item.due_at or far, -getattr(item.change, "risk_rank", 0), item.change.pk))
    return due[:LIST_ROWS], len(due) > LIST_ROWS


def _reviews_owed(changes: list[ChangeRequest], now: datetime, *, until: datetime) -> list[ReviewOwed]:
    owed = [
        ReviewOwed(change, review.label, review.due_at, review.due_at <= now)
        for change in changes
        for review in follow_up_reviews(change)
        if review.due_at <= until
    ]
    return sorted(owed, key=lambda item: (item.due_at, item.change.pk))[:LIST_ROWS]


def _owing_review(until: datetime) -> list[ChangeRequest]:
    """Changes owing a retrospective or post-implementation review due by `until` (follow_up_reviews decides)."""
    condition = Q(retrospective_due_at__lte=until, retrospective_done_at__isnull=True) | Q(
        post_review_due_at__lte=until,
        post_review_done_at__isnull=True,
        status__in=[ChangeStatus.COMPLETED, ChangeStatus.ROLLED_BACK],
    )
    return list(ChangeRequest.objects.filter(condition).select_related("author").order_by("pk")[:CAB_EXAMINED])


def reviews_this_person_may_record(user: User, now: datetime) -> list[ReviewOwed]:
    """Reviews after the fact due within REVIEW_SOON (or overdue) that this person may carry out."""
    changes = [
        change
        for change in _owing_review(now + REVIEW_SOON)
        if (change.retrospective_done_at is None and retrospective_refusal(user, change) is None)
        or post_review_refusal(user, change) is None
    ]
    return _reviews_owed(changes, now, until=now + REVIEW_SOON)


RUNNING_NEEDS: dict[str, str] = {
    RolloutStatus.PAUSED: "paused",
    RolloutStatus.HALTED: "halted",
}


def _need_kind(rollout: Rollout) -> str | None:
    if rollout.status == RolloutStatus.AWAITING_PROMOTION:
        return "held" if rollout.gate == Gate.INCONCLUSIVE else "gate"
    return RUNNING_NEEDS.get(rollout.status)


NEED_ORDER = {"halted": 0, "held": 1, "gate": 2, "paused": 3}


def operator_section(user: User, now: datetime) -> OperatorSection:
    """Open gates, held, paused and halted rollouts; soak countdowns of running ones; changes starting soon."""
    section = OperatorSection()
    active = Rollout.objects.filter(
        status__in=[RolloutStatus.AWAITING_PROMOTION, RolloutStatus.PAUSED, RolloutStatus.HALTED, RolloutStatus.RUNNING]
    ).select_related("change", "release", "rollback_release")
    for rollout in active.order_by("updated_at", "pk")[: LIST_ROWS * 4]:
        waves = wave_views(rollout)
        kind = _need_kind(rollout)
        if kind is not None:
            section.needs.append(RolloutNeed(rollout, gate_view(rollout, waves), kind, rollout.updated_at))
        current = next((wave for wave in waves if wave.is_current), None)
        if rollout.status == RolloutStatus.RUNNING and current is not None and current.soak_ends_at is not None:
            left = current.soak_ends_at - now
            if left.total_seconds() > 0:
                section.soaks.append(
                    SoakCountdown(rollout, current.index + 1, current.name, current.soak_ends_at, left)
                )
    section.needs.sort(key=lambda need: (NEED_ORDER[need.kind], need.since))
    section.needs = section.needs[:LIST_ROWS]
    section.soaks = sorted(section.soaks, key=lambda soak: soak.ends_at)[:LIST_ROWS]
    for change in changes_ready_to_start(user).select_related("release")[:CAB_EXAMINED]:
        scheduled = change.status == ChangeStatus.SCHEDULED and change.scheduled_start is not None
        starts_at = change.scheduled_start if scheduled else change.requested_window_start
        if starts_at is not None and starts_at <= now + SOON and change.requested_window_end > now:
            held = change.start_held_reason if change.start_held_at is not None and not scheduled else ""
            section.starting.append(StartingSoon(change, starts_at, scheduled, starts_at < now, held))
    # A held scheduled start needs someone now: first, then by start time.
    section.starting = sorted(
        section.starting, key=lambda item: (not item.held_reason, item.starts_at, item.change.pk)
    )[:LIST_ROWS]
    return section


def oversight_section(now: datetime) -> OversightSection:
    """Security events of the last day (latest first, and counted per kind) and reviews past due."""
    return OversightSection(
        events=list(security_event_list().filter(last_at__gte=now - SECURITY_WINDOW)[:LIST_ROWS]),
        kinds=[kind for kind in security_event_summary(now=now) if kind.last_24h],
        overdue_reviews=_reviews_owed(_owing_review(now), now, until=now),
    )


def requester_section(user: User) -> RequesterSection:
    """The person's changes the CAB sent back, and their drafts (newest first)."""
    mine = change_list_for_user(user).filter(author=user).order_by("-updated_at", "-pk")
    return RequesterSection(
        sent_back=list(mine.filter(status=ChangeStatus.CHANGES_REQUESTED)[:LIST_ROWS]),
        drafts=list(mine.filter(status=ChangeStatus.DRAFT)[:LIST_ROWS]),
    )


def needs_you_now(user: User, *, now: datetime | None = None) -> NeedsYouNow:
    """The home page of `user`: one section per role held, each listing what waits for this person."""
    now = now or timezone.now()
    roles = roles_of(user)
    page = NeedsYouNow(now=now)
    if roles & APPROVER_ROLES:
        decisions, more = decisions_due(user, now)
        page.cab = CabSection(decisions, more, reviews_this_person_may_record(user, now))
    if Role.OPERATOR in roles:
        page.operator = operator_section(user, now)
    if roles & {Role.SECURITY_OFFICER, Role.AUDITOR}:
        page.oversight = oversight_section(now)
    if Role.REQUESTER in roles:
        page.requester = requester_section(user)
    return page
