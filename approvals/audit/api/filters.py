"""Query filters for the decision record and the security events (the audit API and the audit pages share them)."""

from datetime import UTC
from typing import Any

import django_filters
from django import forms
from django.core.exceptions import ValidationError

from approvals.audit.choices import SecurityEventKind
from approvals.audit.export import MAX_SEQ
from approvals.audit.models import DecisionRecord, SecurityEvent

_MAX_REVISION = 2**31 - 1


class _IntegerFilter(django_filters.NumberFilter):
    """A whole-number filter (NumberFilter would accept decimals); bounds keep values inside the column type."""

    field_class = forms.IntegerField  # type: ignore[assignment]  # the stubs pin NumberFilter to DecimalField; any number field works


class _UTCDateTimeField(forms.DateTimeField):
    """An ISO 8601 date-time normalised to UTC; naive values are taken as UTC, out-of-range offsets refused."""

    def to_python(self, value: Any) -> Any:
        result = super().to_python(value)
        if result is None:
            return None
        try:
            return result.astimezone(UTC)
        except OverflowError as exc:
            raise ValidationError("Date-time out of range.", code="overflow") from exc


class _UTCDateTimeFilter(django_filters.DateTimeFilter):  # IsoDateTimeFilter is DateTimeFilter with its own field_class
    field_class = _UTCDateTimeField


class DecisionRecordFilter(django_filters.FilterSet):
    """Filters for browsing the record; ranges are inclusive for seq and half-open [since, until) for time."""

    action = django_filters.CharFilter(help_text="Exact action, e.g. change.submit or audit.export.")
    object_type = django_filters.CharFilter()
    object_id = django_filters.CharFilter()
    actor = django_filters.CharFilter(field_name="actor_name", help_text="Username, or system:<component>.")
    revision = _IntegerFilter(min_value=0, max_value=_MAX_REVISION)
    from_seq = _IntegerFilter(field_name="seq", lookup_expr="gte", min_value=1, max_value=MAX_SEQ)
    to_seq = _IntegerFilter(field_name="seq", lookup_expr="lte", min_value=1, max_value=MAX_SEQ)
    since = _UTCDateTimeFilter(field_name="created_at", lookup_expr="gte", help_text="Created at or after.")
    until = _UTCDateTimeFilter(field_name="created_at", lookup_expr="lt", help_text="Created before.")

    class Meta:
        model = DecisionRecord
        fields: list[str] = []


class SecurityEventFilter(django_filters.FilterSet):
    """Filters of the security events (the API and the Security page share them); times match the latest refusal."""

    kind = django_filters.MultipleChoiceFilter(choices=SecurityEventKind.choices, help_text="One or more kinds.")
    source = django_filters.CharFilter(help_text="Exact source, e.g. device_api.auth or approvals.change_update.")
    actor = django_filters.CharFilter(field_name="actor_name", help_text="Username of the refused person.")
    device_serial = django_filters.CharFilter()
    address = django_filters.CharFilter()
    since = _UTCDateTimeFilter(field_name="last_at", lookup_expr="gte", help_text="Last refused at or after.")
    until = _UTCDateTimeFilter(field_name="last_at", lookup_expr="lt", help_text="Last refused before.")

    class Meta:
        model = SecurityEvent
        fields: list[str] = []
