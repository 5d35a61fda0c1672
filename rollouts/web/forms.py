"""Forms of the rollout pages: shape checks only (the services decide what is allowed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django import forms

from approvals.plan_warnings import PlanWarning
from rollouts.kpis import DEFAULT_PERIODS, MAX_PERIODS, PERIOD_UNITS, WEEK


class ChangeChoiceForm(forms.Form):
    """`?change=<pk>` on the start page."""

    change = forms.IntegerField(min_value=1, max_value=2**63 - 1, label="Change request number")


class StartRolloutForm(forms.Form):
    """The operator confirms the rollout described on the page, and acknowledges each warning it shows."""

    change = forms.IntegerField(min_value=1, max_value=2**63 - 1, widget=forms.HiddenInput)
    acknowledge = forms.MultipleChoiceField(
        label="I acknowledge",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Each warning above, acknowledged one by one; the start records which.",
    )
    confirm = forms.BooleanField(
        label="I checked the release, the scope and the waves above",
        error_messages={"required": "Tick the box to confirm you checked what will be rolled out."},
    )

    def __init__(self, *args: Any, warnings: Sequence[PlanWarning] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["acknowledge"]
        assert isinstance(field, forms.MultipleChoiceField)
        field.choices = [(warning.code, warning.message) for warning in warnings]
        self._warnings = list(warnings)

    def clean_acknowledge(self) -> list[str]:
        given = set(self.cleaned_data.get("acknowledge") or [])
        missing = [warning.message for warning in self._warnings if warning.code not in given]
        if missing:
            raise forms.ValidationError(["Acknowledge this warning to start: " + message for message in missing])
        return sorted(given)


class RolloutActionForm(forms.Form):
    """A person's decision on a rollout: a reason is always required on the page; promote names its wave."""

    reason = forms.CharField(
        max_length=2000,
        strip=True,
        error_messages={"required": "Give a reason: it is recorded with your name in the decision record."},
    )
    wave_index = forms.IntegerField(min_value=0, max_value=100, required=False)


class KpiPeriodForm(forms.Form):
    """Which periods the KPI page covers."""

    unit = forms.ChoiceField(
        choices=[(unit, {"day": "Days", "week": "Weeks"}[unit]) for unit in PERIOD_UNITS],
        initial=WEEK,
        required=False,
        label="Period",
    )
    periods = forms.IntegerField(
        min_value=1,
        max_value=max(MAX_PERIODS.values()),
        required=False,
        label="How many periods",
        help_text=f"Up to {MAX_PERIODS['week']} weeks or {MAX_PERIODS['day']} days.",
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        unit = data.get("unit") or WEEK
        data["unit"] = unit
        periods = data.get("periods")
        if periods is None:
            data["periods"] = DEFAULT_PERIODS[unit]
        elif periods > MAX_PERIODS[unit]:
            self.add_error("periods", f"At most {MAX_PERIODS[unit]} {unit}s.")
        return data
