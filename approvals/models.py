"""Change requests, risk questionnaire, approval policy, approvals and the hash-chained decision record."""

from __future__ import annotations

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
    SecurityEventKind,
)
from ota_project.roles import Role


class DecisionRecord(models.Model):
    """One entry of the append-only, hash-chained log of every decision and transition."""

    seq = models.PositiveBigIntegerField(unique=True, help_text="Position in the chain, from 1.")
    created_at = models.DateTimeField()
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    actor_name = models.CharField(max_length=150, help_text="Username at the time, or system:<component>.")
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    revision = models.PositiveIntegerField(null=True, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    # Ed25519 over the hash by the audit key (outside the database). NULL means "never signed": records from before
    # signing at append time, pinned by the signed checkpoint that migration 0005 wrote. Nullable also so that
    # adding the columns does not rebuild the SQLite table (which would drop its append-only triggers).
    signature = models.CharField(  # noqa: DJ001
        max_length=88, null=True, blank=True, help_text="base64 Ed25519 over the hash."
    )
    key_id = models.CharField(  # noqa: DJ001
        max_length=64, null=True, blank=True, help_text="sha256 of the signing public key."
    )
    # Idempotency key of a step that may run more than once (a retried activity, a re-run after continue-as-new):
    # an append with a key already in the chain appends nothing. NULL for decisions made exactly once by nature.
    step_key = models.CharField(  # noqa: DJ001
        max_length=200, null=True, blank=True, help_text="Idempotency key of the step that made the decision."
    )

    class Meta:
        ordering = ["seq"]
        indexes = [
            models.Index(fields=["object_type", "object_id"]),
            models.Index(fields=["action"]),
            models.Index(fields=["created_at"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["step_key"], condition=Q(step_key__isnull=False), name="decisionrecord_step_key_once"
            )
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.object_type}:{self.object_id}"


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
    release = models.ForeignKey("rollouts.FirmwareRelease", on_delete=models.PROTECT, related_name="changes")
    rollback_release = models.ForeignKey(
        "rollouts.FirmwareRelease", on_delete=models.PROTECT, related_name="rollback_for_changes"
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

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["change_type", "risk_level"], name="one_policy_per_type_and_risk")
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


class SecurityEvent(models.Model):
    """Refusals of one kind, from one source, by one actor, device or address within one time bucket (aggregated).

    Written only by approvals.security.security_event, outside the refused request's transaction, so a rolled-back
    refusal still leaves its trace. No foreign keys on purpose: the row must not wait on, or vanish with, the user
    or device it names (an actor created in an uncommitted transaction would make the write block).
    """

    kind = models.CharField(max_length=32, choices=SecurityEventKind.choices)
    source = models.CharField(max_length=64, help_text="Where the refusal happened, e.g. device_api.status.")
    bucket = models.DateTimeField(help_text="Start of the time bucket this row counts refusals in.")
    key = models.CharField(
        max_length=100,
        help_text="Who it aggregates by: user:<id>, device:<serial>, address:<ip>, - (nobody known) or * (overflow).",
    )
    actor_id = models.BigIntegerField(null=True, blank=True, help_text="The refused person's user id, if any.")
    actor_name = models.CharField(max_length=150, blank=True, default="")
    device_serial = models.CharField(max_length=64, blank=True, default="", help_text="Serial claimed or used.")
    address = models.CharField(max_length=64, blank=True, default="", help_text="Client address (REMOTE_ADDR).")
    subject = models.CharField(max_length=200, blank=True, default="", help_text="What was asked for (latest).")
    message = models.CharField(max_length=500, help_text="The latest refusal message.")
    count = models.PositiveBigIntegerField(default=1)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()

    class Meta:
        ordering = ["-last_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "source", "bucket", "key"], name="one_security_event_per_key_and_bucket"
            ),
        ]
        indexes = [
            models.Index(fields=["kind", "source", "bucket", "address"], name="security_event_address_idx"),
            models.Index(fields=["last_at"], name="security_event_last_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.source} {self.key} x{self.count}"
