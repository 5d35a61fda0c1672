"""Forms of the trace pages: the per-device outcome filters and the vehicle search (shape only)."""

from __future__ import annotations

from typing import Any

from django import forms

from ota_project.web.forms import form_field
from rollouts.choices import DeploymentKind, DeploymentStatus


class DeploymentFilterForm(forms.Form):
    """Filters of a rollout's per-device outcome table."""

    status = forms.ChoiceField(label="Status", required=False, choices=[("", "Any status"), *DeploymentStatus.choices])
    kind = forms.ChoiceField(
        label="Kind", required=False, choices=[("", "Updates and rollbacks"), *DeploymentKind.choices]
    )
    wave = forms.TypedChoiceField(label="Wave", required=False, coerce=int, empty_value=None)
    serial = forms.CharField(label="Serial contains", max_length=64, required=False)

    def __init__(self, *args: Any, waves: list[tuple[int, str]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        form_field(self, "wave", forms.ChoiceField).choices = [
            ("", "Any wave"),
            *((str(index), f"{index + 1} — {name}") for index, name in waves or []),  # people count from 1
        ]

    def selector_filters(self) -> dict[str, Any]:
        """The cleaned values as keyword arguments of rollout_deployment_list."""
        data = self.cleaned_data
        return {
            "status": data.get("status") or "",
            "kind": data.get("kind") or "",
            "wave": data.get("wave"),
            "serial": (data.get("serial") or "").strip(),
        }


class VehicleSearchForm(forms.Form):
    """Find a vehicle's software register by serial or VIN."""

    serial = forms.CharField(label="Device serial or VIN", max_length=64, strip=True)
