"""Change request life cycle, change types, risk levels and approval decisions."""

from django.db import models


class ChangeStatus(models.TextChoices):
    """Change request status; values live in rows and decision records and are never renamed."""

    DRAFT = "draft", "Draft"
    SUBMITTED = "submitted", "Submitted"
    IN_REVIEW = "in_review", "In review"
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"
    SCHEDULED = "scheduled", "Scheduled"
    IMPLEMENTING = "implementing", "Implementing"
    COMPLETED = "completed", "Completed"
    ROLLED_BACK = "rolled_back", "Rolled back"
    CANCELLED = "cancelled", "Cancelled"


S = ChangeStatus
CHANGE_TRANSITIONS: dict[str, frozenset[str]] = {
    S.DRAFT: frozenset({S.SUBMITTED, S.CANCELLED}),
    S.SUBMITTED: frozenset({S.IN_REVIEW, S.APPROVED, S.REJECTED, S.CHANGES_REQUESTED, S.CANCELLED}),
    S.IN_REVIEW: frozenset({S.SUBMITTED, S.APPROVED, S.REJECTED, S.CHANGES_REQUESTED, S.CANCELLED}),
    S.CHANGES_REQUESTED: frozenset({S.SUBMITTED, S.CANCELLED}),
    S.APPROVED: frozenset({S.SUBMITTED, S.SCHEDULED, S.IMPLEMENTING, S.CANCELLED}),
    # scheduled -> approved: the pre-flight held the automatic start; -> submitted: the approval lapsed.
    S.SCHEDULED: frozenset({S.SUBMITTED, S.APPROVED, S.IMPLEMENTING, S.CANCELLED}),
    S.IMPLEMENTING: frozenset({S.COMPLETED, S.ROLLED_BACK, S.CANCELLED}),
    S.REJECTED: frozenset(),
    S.COMPLETED: frozenset(),
    S.ROLLED_BACK: frozenset(),
    S.CANCELLED: frozenset(),
}
CHANGE_TERMINAL = frozenset({S.REJECTED, S.COMPLETED, S.ROLLED_BACK, S.CANCELLED})
# Statuses in which reviewers may decide.
CHANGE_REVIEWABLE = frozenset({S.SUBMITTED, S.IN_REVIEW})
# Statuses in which the author may still edit; editing after submission bumps the revision.
CHANGE_EDITABLE = frozenset({S.DRAFT, S.SUBMITTED, S.IN_REVIEW, S.CHANGES_REQUESTED, S.APPROVED})
# Statuses in which a person may cancel the change. Implementing -> cancelled stays in the table for the rollout's
# abort (rollouts.rollout_finish closes the change); a person aborts the rollout instead of cancelling its change.
CHANGE_CANCELLABLE = frozenset({S.DRAFT, S.SUBMITTED, S.IN_REVIEW, S.CHANGES_REQUESTED, S.APPROVED, S.SCHEDULED})
# Statuses in which the change's rollout runs and offers its release to devices.
CHANGE_ROLLOUT_RUNNING = frozenset({S.IMPLEMENTING})
# Statuses after which the change has been reviewed as a whole and waits for the CAB queue no longer.
CHANGE_PENDING_REVIEW = frozenset({S.SUBMITTED, S.IN_REVIEW})


class ChangeType(models.TextChoices):
    STANDARD = "standard", "Standard (pre-approved template)"
    NORMAL = "normal", "Normal"
    EMERGENCY = "emergency", "Emergency"


class RiskLevel(models.TextChoices):
    """Risk levels in ascending order; compare with `risk_rank`."""

    LOW = "low", "Low"
    MODERATE = "moderate", "Moderate"
    HIGH = "high", "High"
    CRITICAL = "critical", "Critical"


RISK_ORDER: tuple[str, ...] = (RiskLevel.LOW, RiskLevel.MODERATE, RiskLevel.HIGH, RiskLevel.CRITICAL)


def risk_rank(level: str) -> int:
    """Position of a risk level in ascending order (low = 0)."""
    return RISK_ORDER.index(level)


class ApprovalDecision(models.TextChoices):
    APPROVED = "approved", "Approved"
    REJECTED = "rejected", "Rejected"
    CHANGES_REQUESTED = "changes_requested", "Changes requested"


class QuestionKind(models.TextChoices):
    BOOLEAN = "boolean", "Yes / no"
    CHOICE = "choice", "One of several options"
    NUMBER = "number", "Number"


class AnswerSource(models.TextChoices):
    """Where an answer comes from: the requester, or computed from the change itself."""

    REQUESTER = "requester", "Answered by the requester"
    FLEET_SHARE_PERCENT = "fleet_share_percent", "Computed: share of the active fleet targeted (%)"
    HARDWARE_MODELS_TOUCHED = "hardware_models_touched", "Computed: number of hardware models targeted"
    DEVICES_TARGETED = "devices_targeted", "Computed: number of devices targeted"


class RuleOperator(models.TextChoices):
    EQ = "eq", "equals"
    NE = "ne", "differs from"
    GT = "gt", "greater than"
    GTE = "gte", "at least"
    LT = "lt", "less than"
    LTE = "lte", "at most"
    IN = "in", "one of"
