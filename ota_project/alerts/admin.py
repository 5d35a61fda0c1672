"""Admin: alerts and their webhook deliveries, read-only (raised by services, acted on in the alert pages)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.http import HttpRequest

from ota_project.alerts.models import Alert, AlertDelivery


class _ReadOnly(admin.ModelAdmin):
    """Visible to administrators, never changed here: acknowledging or resolving is a recorded decision."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(Alert)
class AlertAdmin(_ReadOnly):
    list_display = ["id", "kind", "severity", "status", "title", "occurrences", "last_seen_at"]
    list_filter = ["status", "severity", "kind"]
    search_fields = ["dedup_key", "title"]


@admin.register(AlertDelivery)
class AlertDeliveryAdmin(_ReadOnly):
    list_display = ["id", "alert", "notification", "status", "attempts", "last_status_code", "next_attempt_at"]
    list_filter = ["status"]
