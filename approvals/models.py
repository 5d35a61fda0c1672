"""Change requests, risk questionnaire, approval policy and approvals (the decision record lives in approvals.audit)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.conf import settings
from django.db import models
from django.db.models import Q

from approvals.choices import (
    AnswerSource,
    ApprovalDecision,
    ChangeStatus,
    ChangeType,
    QuestionKind,
    RiskLevel,
    RuleOperator,
)
from devices.scope import TargetScope
from ota_project.roles import Role

if TYPE_CHECKING:
    from approvals.plans import RolloutPlan


class ChangeTemplate(models.Model):
    """A pre-approved template for standard changes: what it may cover and how risky it may be."""

    name = models.CharField(max_length=120, unique=True)
    description = models.TextField()
    max_risk_level = models.CharField(max_length=16, choices=RiskLevel.choices, default=RiskLevel.MODERATE)
    hardware_models = models.ManyToManyField("devices.HardwareModel", blank=True, related_name="+")
    is_active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.name


class ChangeRequest(models.Model):
    """A request to release firmware to a scope of vehicles, reviewed by the CAB before any rollout."""

    change_type = models.CharField(max_length=16, choices=ChangeType.choices, default=ChangeType.NORMAL)
    template = models.ForeignKey(
        ChangeTemplate, null=True, blank=True, on_delete=models.PROTECT, related_name="changes"
    )
    title = models.CharField(max_length=200)
    justification = models.TextField()
    release = models.ForeignKey("firmware.FirmwareRelease", on_delete=models.PROTECT, related_name="changes")
    rollback_release = models.ForeignKey(
        "firmware.FirmwareRelease", on_delete=models.PROTECT, related_name="rollback_for_changes"
    )
    target_scope = models.JSONField(default=dict)
    impact_analysis = models.TextField()
    test_evidence_summary = models.TextField(blank=True, default="")
    requested_window_start = models.DateTimeField()
    requested_window_end = models.DateTimeField()
    rollout_plan = models.JSONField(default=dict)
    emergency_reason = models.TextField(blank=True, default="")
    risk_answers = models.JSONField(default=dict)
    risk_score = models.IntegerField(default=0)
    risk_level = models.CharField(max_length=16, choices=RiskLevel.choices, default=RiskLevel.LOW)
    risk_raised_by = models.JSONField(default=list, help_text="Names of the rules that raised the level.")
    revision = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=20, choices=ChangeStatus.choices, default=ChangeStatus.DRAFT)
    author = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="authored_changes")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    scheduled_start = models.DateTimeField(null=True, blank=True)
    retrospective_due_at = models.DateTimeField(null=True, blank=True)
    retrospective_done_at = models.DateTimeField(null=True, blank=True)
    post_review_done_at = models.DateTimeField(null=True, blank=True)
    post_review_due_at = models.DateTimeField(
        null=True, blank=True, help_text="Completed or rolled-back changes owe a post-implementation review by then."
    )
    # The change's timers (workflows/change.py drives them; these columns are what people and the rules read).
    review_started_at = models.DateTimeField(
        null=True, blank=True, help_text="When the current round of review began (submission or resubmission)."
    )
    scheduled_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The operator who scheduled the start; the timer starts the rollout as this person.",
    )
    approval_lapsed_at = models.DateTimeField(null=True, blank=True)
    approval_lapse_reason = models.CharField(max_length=200, blank=True, default="")
    start_held_at = models.DateTimeField(null=True, blank=True)
    start_held_reason = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "risk_level"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(requested_window_end__gt=models.F("requested_window_start")),
                name="change_window_ordered",
            ),
        ]

    def __str__(self) -> str:
        return f"CR-{self.pk} r{self.revision} {self.title}"

    @property
    def plan(self) -> RolloutPlan | None:
        """The stored rollout plan, typed; None while a draft has none yet."""
        from approvals.plans import plan_parse  # plans -> records -> models

        return plan_parse(self.rollout_plan) if self.rollout_plan else None

    @property
    def scope(self) -> TargetScope:
        """The stored target scope, typed (empty while a draft has none yet)."""
        return TargetScope.stored(self.target_scope)


class TestEvidence(models.Model):
    """A file attached to a change as test evidence, stored by content hash."""

    change = models.ForeignKey(ChangeRequest, on_delete=models.PROTECT, related_name="evidence")
    file_name = models.CharField(max_length=128)
    sha256 = models.CharField(max_length=64)
    size_bytes = models.PositiveBigIntegerField()
    storage_path = models.CharField(max_length=255)
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    uploaded_at = models.DateTimeField(auto_now_add=True)
    revision = models.PositiveIntegerField(help_text="Change revision this file was added in.")

    class Meta:
        ordering = ["uploaded_at", "id"]


class RiskQuestion(models.Model):
    """One question of the risk questionnaire and how its answer scores (administrator-editable)."""

    key = models.SlugField(max_length=64, unique=True)
    text = models.CharField(max_length=300)
    kind = models.CharField(max_length=16, choices=QuestionKind.choices)
    source = models.CharField(max_length=32, choices=AnswerSource.choices, default=AnswerSource.REQUESTER)
    choices = models.JSONField(default=list, blank=True, help_text="For choice questions: allowed answers.")
    scoring = models.JSONField(
        default=dict,
        help_text='boolean: {"true": 3, "false": 0}; choice: {"option": points}; '
        'number: {"bands": [[min_value, points], ...]} (highest band whose min is reached).',
    )
    order = models.PositiveIntegerField(default=0)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["order", "key"]

    def __str__(self) -> str:
        return self.key


class RiskLevelBand(models.Model):
    """The score from which a risk level starts (administrator-editable)."""

    level = models.CharField(max_length=16, choices=RiskLevel.choices, unique=True)
    min_score = models.IntegerField()

    class Meta:
        ordering = ["min_score"]


class RiskRule(models.Model):
    """A rule that raises the risk level to at least `minimum_level` when its condition holds; never lowers it."""

    name = models.CharField(max_length=120, unique=True)
    question = models.ForeignKey(RiskQuestion, on_delete=models.PROTECT, related_name="rules")
    operator = models.CharField(max_length=8, choices=RuleOperator.choices)
    value = models.JSONField()
    minimum_level = models.CharField(max_length=16, choices=RiskLevel.choices)
    is_active = models.BooleanField(default=True)

    def __str__(self) -> str:
        return self.name


class ApprovalPolicy(models.Model):
    """For one change type and risk level: the approvals needed (requirements) and retrospective terms."""

    change_type = models.CharField(max_length=16, choices=ChangeType.choices)
    risk_level = models.CharField(max_length=16, choices=RiskLevel.choices)
    retrospective_days = models.PositiveIntegerField(
        null=True,
        blank=True,
        help_text="Emergency changes: a retrospective review is due this many days after approval.",
    )
    allowed = models.BooleanField(default=True, help_text="False: changes of this type may not carry this risk level.")
    post_review_days = models.PositiveIntegerField(
        default=5,
        help_text="A completed or rolled-back change owes its post-implementation review this many days after.",
    )
    review_deadline_minutes = models.PositiveIntegerField(
        default=2880,
        help_text="Reviewers must decide within this many minutes of submission; then the change escalates "
        "(emergency changes to the emergency CAB, others to the CAB chair).",
    )
    reminder_every_minutes = models.PositiveIntegerField(
        default=480,
        help_text="Remind the reviewers who may still decide this often until the deadline (0: no reminders).",
    )
    approval_valid_minutes = models.PositiveIntegerField(
        default=20160,
        help_text="An approval lapses this many minutes after it was given (and always when the requested window "
        "closes); a lapsed change needs a fresh decision.",
    )

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["change_type", "risk_level"], name="one_policy_per_type_and_risk"),
            models.CheckConstraint(condition=Q(review_deadline_minutes__gt=0), name="review_deadline_positive"),
            models.CheckConstraint(condition=Q(approval_valid_minutes__gt=0), name="approval_validity_positive"),
        ]
        ordering = ["change_type", "risk_level"]

    def __str__(self) -> str:
        return f"{self.change_type}/{self.risk_level}"


class ApprovalRequirement(models.Model):
    """`count` distinct approvers holding `role` are needed under a policy."""

    policy = models.ForeignKey(ApprovalPolicy, on_delete=models.CASCADE, related_name="requirements")
    role = models.CharField(max_length=32, choices=Role.choices)
    count = models.PositiveSmallIntegerField(default=1)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["policy", "role"], name="one_requirement_per_role")]


class Approval(models.Model):
    """A reviewer's decision on one revision of a change, bound to the release hash and plan hash."""

    change = models.ForeignKey(ChangeRequest, on_delete=models.PROTECT, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="approvals_given")
    decision = models.CharField(max_length=20, choices=ApprovalDecision.choices)
    comment = models.TextField(blank=True, default="")
    roles_held = models.JSONField(default=list, help_text="Approver's roles when deciding.")
    revision = models.PositiveIntegerField()
    release_sha256 = models.CharField(max_length=64)
    plan_hash = models.CharField(max_length=64)
    created_at = models.DateTimeField(auto_now_add=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    void_reason = models.CharField(max_length=200, blank=True, default="")

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["change", "approver", "revision"], name="one_decision_per_person_per_revision"
            ),
        ]


class ChangeFreeze(models.Model):
    """A period in which no change starts and no running rollout opens a wave, fleet-wide or in one region
    (holidays, peak seasons, incidents); an emergency change passes with a security officer's approval."""

    reason = models.CharField(max_length=300)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    region = models.ForeignKey(
        "devices.Region",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Empty: the whole fleet. Otherwise changes that target any device in this region.",
    )
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="Who answers for the freeze (named in every refusal it causes).",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["starts_at", "id"]
        indexes = [models.Index(fields=["ends_at", "starts_at"])]
        constraints = [
            models.CheckConstraint(condition=Q(ends_at__gt=models.F("starts_at")), name="freeze_ends_after_start"),
        ]

    def __str__(self) -> str:
        where = self.region.code if self.region is not None else "fleet-wide"
        return f"{where} freeze {self.starts_at:%Y-%m-%d %H:%M} - {self.ends_at:%Y-%m-%d %H:%M} UTC: {self.reason}"
