"""Query parameters of the device list: django-filter checks them, devices.selectors.device_list applies them."""

from __future__ import annotations

from typing import Any

import django_filters
from django.db.models import QuerySet

from devices.choices import DeviceStatus, UsageProfile, VehicleType
from devices.models import Device
from devices.selectors import device_list


class DeviceFilter(django_filters.FilterSet):
    """Filters combine with AND; an invalid value (unknown status, say) is a 400, not an empty list."""

    hardware_model = django_filters.CharFilter(max_length=64, help_text="Hardware model name.")
    region = django_filters.CharFilter(max_length=32, help_text="Region code.")
    vehicle_type = django_filters.ChoiceFilter(choices=VehicleType.choices)
    usage_profile = django_filters.ChoiceFilter(choices=UsageProfile.choices)
    tag = django_filters.CharFilter(max_length=64, help_text="Devices carrying this tag, e.g. pilot.")
    status = django_filters.ChoiceFilter(choices=DeviceStatus.choices)
    installed_version = django_filters.CharFilter(max_length=64)
    drift = django_filters.BooleanFilter(help_text="true: reported differs from expected; false: it does not.")
    offline = django_filters.BooleanFilter(
        help_text="true: never checked in or missed its region's poll intervals (see OTA_DEVICE_OFFLINE_AFTER_POLLS)."
    )
    search = django_filters.CharFilter(max_length=64, help_text="Part of a serial or VIN (case-insensitive).")

    class Meta:
        model = Device
        fields: list[str] = []

    def filter_queryset(self, queryset: QuerySet[Device]) -> QuerySet[Device]:
        filters: dict[str, Any] = {
            name: value for name, value in self.form.cleaned_data.items() if value is not None and value != ""
        }
        return device_list(base=queryset, **filters)
