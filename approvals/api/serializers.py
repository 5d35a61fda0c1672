"""Shapes of change-control requests and responses (rules live in approvals.services)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from approvals.choices import ChangeType
from approvals.models import (
    Approval,
    ApprovalPolicy,
    ChangeRequest,
    ChangeTemplate,
    RiskQuestion,
    TestEvidence,
)
from approvals.plans import RolloutPlan, plan_parse
from approvals.selectors import (
    change_approval_expires_at,
    change_plan_hash,
    change_policy_progress,
    change_release_sha256,
    change_review_due_at,
)
from approvals.services import EDITABLE_FIELDS
from devices.firmware.models import FirmwareRelease
from devices.models import HardwareModel
from ota_project.errors import InvalidInput
from ota_project.parsers import StrictJSONField
from ota_project.serializers import InputSerializer


class RolloutPlanField(StrictJSONField):
    """A rollout plan, parsed at the boundary by `plan_parse`: services receive a RolloutPlan. Its field errors
    nest as the JSON does (`{"rollout_plan": {"waves": {"2": {"cohort": [...]}}}}`), as the service's would."""

    def to_internal_value(self, data: Any) -> RolloutPlan:  # type: ignore[override]  # stubs pin JSON types
        try:
            return plan_parse(super().to_internal_value(data))
        except InvalidInput as exc:
            raise serializers.ValidationError(exc.fields.get("rollout_plan", [exc.message])) from exc


class ChangeWriteSerializer(InputSerializer):
    """Fields a requester sets when filing or editing a change."""

    change_type = serializers.ChoiceField(choices=ChangeType.choices, required=False)
    template = serializers.PrimaryKeyRelatedField(
        queryset=ChangeTemplate.objects.all(), required=False, allow_null=True
    )
    title = serializers.CharField(max_length=200)
    justification = serializers.CharField(max_length=10_000)
    release = serializers.PrimaryKeyRelatedField(queryset=FirmwareRelease.objects.all())
    rollback_release = serializers.PrimaryKeyRelatedField(queryset=FirmwareRelease.objects.all())
    target_scope = StrictJSONField()
    impact_analysis = serializers.CharField(max_length=10_000)
    test_evidence_summary = serializers.CharField(max_length=10_000, required=False, allow_blank=True)
    requested_window_start = serializers.DateTimeField()
    requested_window_end = serializers.DateTimeField()
    rollout_plan = RolloutPlanField()
    emergency_reason = serializers.CharField(max_length=5_000, required=False, allow_blank=True)
    risk_answers = StrictJSONField(required=False)


class RevisionDecisionSerializer(InputSerializer):
    """A reviewer's decision names the revision they reviewed."""

    revision = serializers.IntegerField(min_value=1, max_value=2**31 - 1)
    comment = serializers.CharField(max_length=5_000, required=False, allow_blank=True, default="")


class CommentSerializer(InputSerializer):
    comment = serializers.CharField(max_length=5_000)


class ScheduleSerializer(InputSerializer):
    start = serializers.DateTimeField()


class ScopePreviewSerializer(InputSerializer):
    target_scope = StrictJSONField()


class RiskPreviewSerializer(InputSerializer):
    target_scope = StrictJSONField()
    risk_answers = StrictJSONField()


class EvidenceUploadSerializer(InputSerializer):
    file = serializers.FileField()


class ReleaseRefSerializer(serializers.ModelSerializer):
    sha256 = serializers.CharField(source="artifact.sha256")
    size_bytes = serializers.IntegerField(source="artifact.size_bytes")

    class Meta:
        model = FirmwareRelease
        fields = ["id", "version", "release_counter", "sha256", "size_bytes"]


class PolicyProgressSerializer(serializers.Serializer):
    required = serializers.DictField(child=serializers.IntegerField())  # type: ignore[assignment]  # a declared field: the metaclass takes it off the class, Field.required is untouched
    missing = serializers.DictField(child=serializers.IntegerField())
    satisfied = serializers.BooleanField()
    summary = serializers.CharField()


def progress_data(change: ChangeRequest) -> dict[str, Any]:
    progress = change_policy_progress(change)
    return {
        "required": progress.required,
        "missing": progress.missing,
        "satisfied": progress.satisfied,
        "summary": progress.summary(),
    }


class ChangeSerializer(serializers.ModelSerializer):
    """A change request as reviewers see it, with what approvals bind to."""

    author = serializers.CharField(source="author.username")
    release = ReleaseRefSerializer()
    rollback_release = ReleaseRefSerializer()
    release_sha256 = serializers.SerializerMethodField()
    plan_hash = serializers.SerializerMethodField()
    policy = serializers.SerializerMethodField()
    scheduled_by = serializers.CharField(source="scheduled_by.username", default=None, read_only=True)
    review_due_at = serializers.SerializerMethodField()
    approval_expires_at = serializers.SerializerMethodField()

    class Meta:
        model = ChangeRequest
        fields = [
            "id",
            *EDITABLE_FIELDS,
            "risk_score",
            "risk_level",
            "risk_raised_by",
            "revision",
            "status",
            "author",
            "created_at",
            "updated_at",
            "submitted_at",
            "approved_at",
            "scheduled_start",
            "retrospective_due_at",
            "retrospective_done_at",
            "post_review_done_at",
            "release_sha256",
            "plan_hash",
            "policy",
            "scheduled_by",
            "review_started_at",
            "review_due_at",
            "approval_expires_at",
            "approval_lapsed_at",
            "approval_lapse_reason",
            "start_held_at",
            "start_held_reason",
            "post_review_due_at",
        ]
        read_only_fields = fields

    def get_review_due_at(self, change: ChangeRequest) -> datetime | None:
        """When reviewers must have decided by (the policy's deadline); null when not in review."""
        return change_review_due_at(change)

    def get_approval_expires_at(self, change: ChangeRequest) -> datetime | None:
        """When the approval lapses (window end or the policy's validity); null when not approved."""
        return change_approval_expires_at(change)

    def get_release_sha256(self, change: ChangeRequest) -> str:
        return change_release_sha256(change)

    def get_plan_hash(self, change: ChangeRequest) -> str:
        return change_plan_hash(change)

    @extend_schema_field(PolicyProgressSerializer)
    def get_policy(self, change: ChangeRequest) -> dict[str, Any]:
        return progress_data(change)


class ApprovalSerializer(serializers.ModelSerializer):
    approver = serializers.CharField(source="approver.username")

    class Meta:
        model = Approval
        fields = [
            "id",
            "approver",
            "decision",
            "comment",
            "roles_held",
            "revision",
            "release_sha256",
            "plan_hash",
            "created_at",
            "voided_at",
            "void_reason",
        ]
        read_only_fields = fields


class EvidenceSerializer(serializers.ModelSerializer):
    uploaded_by = serializers.CharField(source="uploaded_by.username")

    class Meta:
        model = TestEvidence
        fields = ["id", "file_name", "sha256", "size_bytes", "uploaded_by", "uploaded_at", "revision"]
        read_only_fields = fields


class ScopeSummarySerializer(serializers.Serializer):
    devices = serializers.IntegerField()
    fleet_share_percent = serializers.FloatField()
    by_hardware_model = serializers.DictField(child=serializers.IntegerField())
    by_region = serializers.DictField(child=serializers.IntegerField())
    by_version = serializers.DictField(child=serializers.IntegerField())
    excluded_not_active = serializers.IntegerField()


class RiskAssessmentSerializer(serializers.Serializer):
    answers = serializers.DictField()
    score = serializers.IntegerField()
    score_level = serializers.CharField()
    level = serializers.CharField()
    raised_by = serializers.ListField(child=serializers.CharField())
    points = serializers.DictField(child=serializers.IntegerField())
    unanswered = serializers.ListField(child=serializers.CharField())


class RiskQuestionSerializer(serializers.ModelSerializer):
    class Meta:
        model = RiskQuestion
        fields = ["key", "text", "kind", "source", "choices", "scoring", "order"]
        read_only_fields = fields


class ApprovalPolicySerializer(serializers.ModelSerializer):
    requirements = serializers.SerializerMethodField()

    class Meta:
        model = ApprovalPolicy
        fields = ["id", "change_type", "risk_level", "allowed", "retrospective_days", "requirements"]
        read_only_fields = fields

    def get_requirements(self, policy: ApprovalPolicy) -> dict[str, int]:
        return {r.role: r.count for r in policy.requirements.all()}


class ChangeTemplateSerializer(serializers.ModelSerializer):
    hardware_models: serializers.SlugRelatedField[HardwareModel] = serializers.SlugRelatedField(
        slug_field="name", many=True, read_only=True
    )

    class Meta:
        model = ChangeTemplate
        fields = ["id", "name", "description", "max_risk_level", "hardware_models", "is_active"]
        read_only_fields = fields
