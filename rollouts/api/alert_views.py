"""Alert API under /api/v1/alerts/: list and read (operators, security officers, auditors); acknowledge and resolve
(operators and security officers; anyone else signed in is refused 403 and the refusal is a security event)."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, serializers, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response

from ota_project.alerts.choices import ALERT_LIVE, ALERT_READ_ROLES, AlertSeverity, AlertStatus
from ota_project.alerts.models import Alert
from ota_project.alerts.services import alert_page_link
from ota_project.roles import Role, acting_user
from rollouts import alert_services


class AlertSerializer(serializers.ModelSerializer[Alert]):
    """An alert with its evidence, who acknowledged or resolved it, and its page."""

    acknowledged_by = serializers.CharField(source="acknowledged_by.username", default=None, read_only=True)
    resolved_by = serializers.CharField(source="resolved_by.username", default=None, read_only=True)
    alert_page = serializers.SerializerMethodField()

    class Meta:
        model = Alert
        fields = [
            "id",
            "kind",
            "dedup_key",
            "severity",
            "status",
            "title",
            "summary",
            "link",
            "alert_page",
            "evidence",
            "occurrences",
            "first_seen_at",
            "last_seen_at",
            "notified_at",
            "notifications",
            "acknowledged_at",
            "acknowledged_by",
            "acknowledge_note",
            "resolved_at",
            "resolved_by",
            "resolve_note",
        ]
        read_only_fields = fields

    def get_alert_page(self, alert: Alert) -> str:
        return alert_page_link(alert)


class AlertNoteSerializer(serializers.Serializer[Any]):
    """What a person says when acknowledging (optional) or resolving (required) an alert."""

    note = serializers.CharField(
        required=False, allow_blank=True, max_length=alert_services.MAX_NOTE_CHARS, trim_whitespace=True
    )


class AlertFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=AlertStatus.choices)
    severity = django_filters.MultipleChoiceFilter(choices=AlertSeverity.choices)
    kind = django_filters.CharFilter()

    class Meta:
        model = Alert
        fields = ["status", "severity", "kind"]


class AlertViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Alerts, newest activity first; live ones (open, acknowledged) unless `status` asks for others."""

    serializer_class = AlertSerializer
    filterset_class = AlertFilter
    read_roles = tuple(ALERT_READ_ROLES)
    # Every signed-in role reaches the service, which refuses and records anyone but an operator or security officer.
    write_roles = tuple(Role.values)

    def get_queryset(self) -> QuerySet[Alert]:
        alerts = Alert.objects.select_related("acknowledged_by", "resolved_by")
        if self.action == "list" and "status" not in self.request.query_params:
            return alerts.filter(status__in=ALERT_LIVE)
        return alerts

    def _act(self, request: Request, pk: str, service: Any) -> Response:
        data = AlertNoteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        alert = self.get_object()
        moved = service(actor=acting_user(request), alert_id=alert.pk, note=data.validated_data.get("note", ""))
        return Response(AlertSerializer(self.get_queryset().get(pk=moved.pk)).data)

    @extend_schema(request=AlertNoteSerializer, responses=AlertSerializer)
    @action(detail=True, methods=["post"])
    def acknowledge(self, request: Request, pk: str) -> Response:
        """Acknowledge the alert (operators, security officers): recorded with your name; no more reminders."""
        return self._act(request, pk, alert_services.alert_acknowledge)

    @extend_schema(request=AlertNoteSerializer, responses=AlertSerializer)
    @action(detail=True, methods=["post"])
    def resolve(self, request: Request, pk: str) -> Response:
        """Resolve the alert with a note saying what was done (operators, security officers): recorded."""
        return self._act(request, pk, alert_services.alert_resolve)
