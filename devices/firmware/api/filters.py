"""Query filters for the release list."""

from __future__ import annotations

import django_filters
from django import forms
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field

from devices.firmware.models import FirmwareRelease
from devices.firmware.services import RELEASE_COUNTER_MAX


@extend_schema_field(OpenApiTypes.INT)
class CounterFilter(django_filters.NumberFilter):
    """A whole-number release counter bound (out-of-range values are a 400, not a database error)."""

    field_class = forms.IntegerField  # type: ignore[assignment]  # the stubs pin NumberFilter to DecimalField; any number field works


class ReleaseFilter(django_filters.FilterSet):
    """?hardware_model=<name>&version=<semver>&counter_min=<n>&counter_max=<n>"""

    hardware_model = django_filters.CharFilter(
        field_name="hardware_models__name", distinct=True, max_length=64, help_text="Hardware model name."
    )
    version = django_filters.CharFilter(field_name="version", max_length=64, help_text="Exact version.")
    counter_min = CounterFilter(
        field_name="release_counter", lookup_expr="gte", min_value=0, max_value=RELEASE_COUNTER_MAX
    )
    counter_max = CounterFilter(
        field_name="release_counter", lookup_expr="lte", min_value=0, max_value=RELEASE_COUNTER_MAX
    )

    class Meta:
        model = FirmwareRelease
        fields = ["hardware_model", "version", "counter_min", "counter_max"]
