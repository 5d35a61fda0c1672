"""Alerts and their webhook deliveries (an outbox written in the transaction that raises the alert)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q

from ota_project.alerts.choices import ALERT_LIVE, AlertSeverity, AlertStatus, DeliveryStatus


class Alert(models.Model):
    """One condition that needs a person: at most one live (open or acknowledged) alert per dedup key."""

    kind = models.CharField(max_length=64)
    dedup_key = models.CharField(max_length=200)
    severity = models.CharField(max_length=16, choices=AlertSeverity.choices, default=AlertSeverity.WARNING)
    status = models.CharField(max_length=16, choices=AlertStatus.choices, default=AlertStatus.OPEN)
    title = models.CharField(max_length=200)
    summary = models.TextField()
    link = models.CharField(max_length=500, help_text="Path of the page about it, e.g. /rollouts/12/.")
    evidence = models.JSONField(default=dict)
    # How often the condition was raised while this alert was live, and when.
    occurrences = models.PositiveIntegerField(default=1)
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    # Notification rounds (e-mail + webhook) sent: the first at raise, more after the re-notify interval.
    notified_at = models.DateTimeField()
    notifications = models.PositiveIntegerField(default=1)
    acknowledged_at = models.DateTimeField(null=True, blank=True)
    acknowledged_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    acknowledge_note = models.TextField(blank=True, default="")
    resolved_at = models.DateTimeField(null=True, blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolve_note = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-last_seen_at", "-id"]
        indexes = [models.Index(fields=["status", "-last_seen_at"], name="alert_status_recent")]
        constraints = [
            # Concurrent raises of one condition end in one row (the loser of the insert bumps the winner's).
            models.UniqueConstraint(fields=["dedup_key"], condition=Q(status__in=ALERT_LIVE), name="alert_one_live"),
            models.CheckConstraint(condition=Q(status__in=AlertStatus.values), name="alert_status_valid"),
            models.CheckConstraint(condition=Q(severity__in=AlertSeverity.values), name="alert_severity_valid"),
            models.CheckConstraint(condition=Q(occurrences__gte=1), name="alert_occurrences_positive"),
            models.CheckConstraint(
                condition=~Q(status=AlertStatus.OPEN) | Q(acknowledged_at__isnull=True, resolved_at__isnull=True),
                name="alert_open_untouched",
            ),
            models.CheckConstraint(
                condition=~Q(status=AlertStatus.ACKNOWLEDGED)
                | Q(acknowledged_at__isnull=False, acknowledged_by__isnull=False, resolved_at__isnull=True),
                name="alert_acknowledged_by_someone",
            ),
            models.CheckConstraint(
                condition=~Q(status=AlertStatus.RESOLVED) | Q(resolved_at__isnull=False, resolved_by__isnull=False),
                name="alert_resolved_by_someone",
            ),
        ]

    def __str__(self) -> str:
        return f"alert {self.pk} {self.kind} ({self.status})"


class AlertDelivery(models.Model):
    """One webhook notification of an alert: the JSON body is frozen at creation, so every retry signs the same."""

    alert = models.ForeignKey(Alert, on_delete=models.CASCADE, related_name="deliveries")
    notification = models.PositiveIntegerField(help_text="The alert's notification round this delivers.")
    url = models.CharField(max_length=500)
    body = models.TextField()
    status = models.CharField(max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    # When the next attempt is due; an attempt in flight pushes it out by a lease (so no two workers send at once).
    next_attempt_at = models.DateTimeField()
    last_error = models.CharField(max_length=300, blank=True, default="")
    last_status_code = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField()
    delivered_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "next_attempt_at"], name="alert_delivery_due")]
        constraints = [
            models.UniqueConstraint(fields=["alert", "notification"], name="alert_delivery_once_per_round"),
            models.CheckConstraint(condition=Q(status__in=DeliveryStatus.values), name="alert_delivery_status_valid"),
        ]

    def __str__(self) -> str:
        return f"webhook delivery {self.pk} of alert {self.alert_id} ({self.status})"
