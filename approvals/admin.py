"""Admin: administrators edit the risk questionnaire, rules, bands, policy and templates (each edit recorded);
change requests and approvals are read-only here (the decision record's page is approvals.audit.admin), so every rule is enforced by services."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.forms.models import model_to_dict
from django.http import HttpRequest

from approvals.audit.records import record_decision
from approvals.models import (
    Approval,
    ApprovalPolicy,
    ApprovalRequirement,
    ChangeFreeze,
    ChangeRequest,
    ChangeTemplate,
    RiskLevelBand,
    RiskQuestion,
    RiskRule,
)
from ota_project.roles import acting_user


def _plain(obj: Any) -> dict[str, Any]:
    data = model_to_dict(obj)
    return {
        k: (v if isinstance(v, str | int | float | bool | list | dict | type(None)) else str(v))
        for k, v in data.items()
    }


class RecordedConfigAdmin(admin.ModelAdmin):
    """Configuration edits go into the decision record with before and after (the admin view is atomic)."""

    def save_model(self, request: HttpRequest, obj: Any, form: Any, change: bool) -> None:
        before = _plain(type(obj).objects.get(pk=obj.pk)) if change and obj.pk else None
        super().save_model(request, obj, form, change)
        record_decision(
            actor=acting_user(request),
            action=f"config.{obj._meta.model_name}.{'update' if change else 'create'}",
            object_type=obj._meta.model_name,
            object_id=obj.pk,
            before=before,
            after=_plain(obj),
        )

    def delete_model(self, request: HttpRequest, obj: Any) -> None:
        before = _plain(obj)
        pk = obj.pk
        super().delete_model(request, obj)
        record_decision(
            actor=acting_user(request),
            action=f"config.{obj._meta.model_name}.delete",
            object_type=obj._meta.model_name,
            object_id=pk,
            before=before,
        )

    def delete_queryset(self, request: HttpRequest, queryset: Any) -> None:
        for obj in queryset:
            self.delete_model(request, obj)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Visible to administrators, changeable only through the services."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ApprovalRequirementInline(admin.TabularInline):
    model = ApprovalRequirement
    extra = 1


@admin.register(ApprovalPolicy)
class ApprovalPolicyAdmin(RecordedConfigAdmin):
    list_display = [
        "change_type",
        "risk_level",
        "allowed",
        "review_deadline_minutes",
        "reminder_every_minutes",
        "approval_valid_minutes",
        "retrospective_days",
        "requirement_summary",
    ]
    list_filter = ["change_type", "risk_level"]
    inlines = [ApprovalRequirementInline]

    @admin.display(description="Requirements")
    def requirement_summary(self, policy: ApprovalPolicy) -> str:
        return ", ".join(f"{r.count} × {r.role}" for r in policy.requirements.all()) or "—"

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        policy = form.instance
        record_decision(
            actor=acting_user(request),
            action="config.approvalpolicy.requirements",
            object_type="approvalpolicy",
            object_id=policy.pk,
            after={r.role: r.count for r in policy.requirements.all()},
        )


@admin.register(RiskQuestion)
class RiskQuestionAdmin(RecordedConfigAdmin):
    list_display = ["key", "text", "kind", "source", "order", "is_active"]
    list_editable = ["order"]


@admin.register(RiskRule)
class RiskRuleAdmin(RecordedConfigAdmin):
    list_display = ["name", "question", "operator", "value", "minimum_level", "is_active"]


@admin.register(RiskLevelBand)
class RiskLevelBandAdmin(RecordedConfigAdmin):
    list_display = ["level", "min_score"]


@admin.register(ChangeTemplate)
class ChangeTemplateAdmin(RecordedConfigAdmin):
    list_display = ["name", "max_risk_level", "is_active"]
    filter_horizontal = ["hardware_models"]


@admin.register(ChangeFreeze)
class ChangeFreezeAdmin(RecordedConfigAdmin):
    list_display = ["starts_at", "ends_at", "region", "reason", "owner"]
    list_filter = ["region"]
    search_fields = ["reason", "owner__username"]

    def get_changeform_initial_data(self, request: HttpRequest) -> dict[str, Any]:
        return {**super().get_changeform_initial_data(request), "owner": request.user.pk}


@admin.register(ChangeRequest)
class ChangeRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "title",
        "change_type",
        "risk_level",
        "status",
        "revision",
        "author",
        "requested_window_start",
    ]
    list_filter = ["status", "change_type", "risk_level"]
    search_fields = ["title", "author__username"]


@admin.register(Approval)
class ApprovalAdmin(ReadOnlyAdmin):
    list_display = ["change", "approver", "decision", "revision", "created_at", "voided_at"]
    list_filter = ["decision"]
