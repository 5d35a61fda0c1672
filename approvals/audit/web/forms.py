"""Forms of the audit page: the decision-record filters (shape only; the reads live in audit_selectors)."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from django import forms

from approvals.audit.choices import AuditKind, FindingSeverity
from approvals.audit.web.selectors import audit_action_list, audit_object_type_list
from ota_project.web.forms import form_field


class RecordFilterForm(forms.Form):
    """Filters of the decision-record list; dates are whole UTC days, both ends included."""

    action = forms.ChoiceField(label="Action", required=False)
    actor = forms.CharField(label="Actor", max_length=150, required=False, help_text="Username, or system:<component>.")
    object_type = forms.ChoiceField(label="Object type", required=False)
    object_id = forms.CharField(label="Object id", max_length=64, required=False)
    date_from = forms.DateField(
        label="From (UTC day)", required=False, widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )
    date_to = forms.DateField(
        label="To (UTC day, included)",
        required=False,
        widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d"),
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        form_field(self, "action", forms.ChoiceField).choices = [
            ("", "Any action"),
            *((a, a) for a in audit_action_list()),
        ]
        form_field(self, "object_type", forms.ChoiceField).choices = [
            ("", "Any object type"),
            *((t, t) for t in audit_object_type_list()),
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        date_from, date_to = data.get("date_from"), data.get("date_to")
        if date_to and date_to >= date.max:
            self.add_error("date_to", "Enter a day before 9999-12-31.")
        elif date_from and date_to and date_to < date_from:
            self.add_error("date_to", "Must not be before the From day.")
        return data

    @property
    def since(self) -> datetime | None:
        """Start of the From day in UTC (inclusive)."""
        day = self.cleaned_data.get("date_from")
        return datetime.combine(day, time.min, tzinfo=UTC) if day else None

    @property
    def until(self) -> datetime | None:
        """Start of the day after the To day in UTC (exclusive), so the To day is included."""
        day = self.cleaned_data.get("date_to")
        return datetime.combine(day + timedelta(days=1), time.min, tzinfo=UTC) if day else None

    def selector_filters(self) -> dict[str, Any]:
        """The cleaned values as keyword arguments of audit_record_list."""
        data = self.cleaned_data
        return {
            "action": data.get("action") or "",
            "actor": (data.get("actor") or "").strip(),
            "object_type": data.get("object_type") or "",
            "object_id": (data.get("object_id") or "").strip(),
            "since": self.since,
            "until": self.until,
        }

    def has_record_filters(self) -> bool:
        """True when a filter other than the date range is set (exports cover only date ranges)."""
        data = self.cleaned_data
        return any((data.get("action"), data.get("actor"), data.get("object_type"), data.get("object_id")))


FINDING_STATES = (("open", "Open"), ("resolved", "Resolved"), ("all", "Open and resolved"))


class FindingFilterForm(forms.Form):
    """Filters of the findings page: audit kind, severity, open or resolved."""

    kind = forms.ChoiceField(label="Audit", required=False, choices=[("", "Every audit"), *AuditKind.choices])
    severity = forms.ChoiceField(
        label="Severity", required=False, choices=[("", "Any severity"), *FindingSeverity.choices]
    )
    state = forms.ChoiceField(label="State", required=False, choices=FINDING_STATES)

    def clean_state(self) -> str:
        return self.cleaned_data.get("state") or "open"
