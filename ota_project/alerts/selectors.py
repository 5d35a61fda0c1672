"""Reads of alerts for the pages, the API and the navigation count."""

from __future__ import annotations

from django.db.models import QuerySet

from ota_project.alerts.choices import ALERT_LIVE, AlertStatus
from ota_project.alerts.models import Alert


def alert_list(*, status: str = "") -> QuerySet[Alert]:
    """Alerts, newest activity first: the live ones (open and acknowledged) by default, or one status."""
    alerts = Alert.objects.select_related("acknowledged_by", "resolved_by")
    if status:
        return alerts.filter(status=status)
    return alerts.filter(status__in=ALERT_LIVE)


def alert_get(alert_id: int) -> Alert | None:
    """One alert with the people who acted on it, or None."""
    return Alert.objects.select_related("acknowledged_by", "resolved_by").filter(pk=alert_id).first()


def open_alert_count() -> int:
    """Alerts nobody has acknowledged yet (the count in the navigation)."""
    return Alert.objects.filter(status=AlertStatus.OPEN).count()
