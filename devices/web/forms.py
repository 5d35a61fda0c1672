"""Forms of the fleet pages: the inventory filters and the reason for a quarantine release (shape only)."""

from __future__ import annotations

from typing import Any

from django import forms

from devices.choices import DeviceStatus
from devices.validators import MAX_REASON_LENGTH
from devices.web.selectors import inventory_filter_options
from ota_project.web.forms import form_field


class InventoryFilterForm(forms.Form):
    """Search and filters of the inventory; every value is checked against what exists (bad value -> form error)."""

    q = forms.CharField(label="Serial or VIN", max_length=64, required=False, strip=True)
    hardware_model = forms.ChoiceField(label="Hardware model", required=False)
    region = forms.ChoiceField(label="Region", required=False)
    tag = forms.ChoiceField(label="Tag", required=False)
    status = forms.ChoiceField(label="Status", required=False, choices=[("", "Any status"), *DeviceStatus.choices])
    installed_version = forms.ChoiceField(label="Installed version", required=False)
    drift = forms.BooleanField(label="Drift only", required=False)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        options = inventory_filter_options()
        any_label = {
            "hardware_model": "Any hardware model",
            "region": "Any region",
            "tag": "Any tag",
            "installed_version": "Any version",
        }
        for name, label in any_label.items():
            form_field(self, name, forms.ChoiceField).choices = [("", label), *options[name]]

    def selector_filters(self) -> dict[str, Any]:
        """The cleaned values as keyword arguments of devices.selectors.device_list (empty values left out)."""
        data = self.cleaned_data
        filters: dict[str, Any] = {
            name: data[name]
            for name in ("hardware_model", "region", "tag", "status", "installed_version")
            if data.get(name)
        }
        if data.get("q"):
            filters["search"] = data["q"]
        if data.get("drift"):
            filters["drift"] = True
        return filters


class ReasonForm(forms.Form):
    """The reason a person gives for a status action; required (the page's rule for releases)."""

    reason = forms.CharField(
        label="Reason",
        max_length=MAX_REASON_LENGTH,
        strip=True,
        error_messages={"required": "A reason is required to release a device from quarantine."},
    )
