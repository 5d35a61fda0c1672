"""Admin: the decision record is visible to administrators and read-only (rows are appended by services only)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from approvals.audit.models import AuditFinding, DecisionRecord


@admin.register(DecisionRecord)
class DecisionRecordAdmin(admin.ModelAdmin):
    """Visible to administrators, never changeable here: the table is append-only (and refuses UPDATE/DELETE)."""

    list_display = ["seq", "created_at", "actor_name", "action", "object_type", "object_id", "revision"]
    list_filter = ["action", "object_type"]
    search_fields = ["object_id", "actor_name", "hash"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(AuditFinding)
class AuditFindingAdmin(admin.ModelAdmin):
    """Findings of the recurring audits and the signing expiry audit, read-only (the audits open and resolve them)."""

    list_display = [
        "kind",
        "severity",
        "subject_type",
        "subject",
        "code",
        "first_seen_at",
        "last_seen_at",
        "resolved_at",
    ]
    list_filter = ["kind", "severity", "code", ("resolved_at", admin.EmptyFieldListFilter)]
    search_fields = ["subject", "message"]
    readonly_fields = [field.name for field in AuditFinding._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False
