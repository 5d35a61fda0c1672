"""The shape of inventory input, declared once: the API, the importer, the admin forms and the services parse with it.

These serializers check shape only (types, lengths, patterns, choices, ranges; the field rules themselves are the
functions in devices.validators). The rules that need the database or other rows (uniqueness, state) are in
devices.services. A service called without a serializer in front (an activity, a command, the admin) parses its
arguments with the same serializer through `parse`, so it refuses exactly what the API refuses, with the same
field errors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from django.core.validators import ProhibitNullCharactersValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers
from rest_framework.validators import ProhibitSurrogateCharactersValidator

from devices.choices import (
    NetworkCapability,
    SigningScheme,
    UpdateChannel,
    UsageProfile,
    ValidationCheck,
    VehicleType,
)
from devices.models import MAX_POLL_SECONDS, MIN_POLL_SECONDS, HardwareModel, Region
from devices.validators import (
    MAX_BUDGET,
    MAX_HEALTH_ENTRIES,
    MAX_HEALTH_NAME,
    MAX_RELEASE_COUNTER,
    MAX_TAGS,
    PARTITION_SCHEMES,
    SLOT_NAMES,
    validate_certificate_fingerprint,
    validate_partition_layout,
    validate_semver,
    validate_serial,
    validate_time_zone,
    validate_validation_checks,
    validate_vin,
)
from ota_project.errors import InvalidInput
from ota_project.serializers import InputSerializer

# ---------------------------------------------------------------------------------------------------------------
# Fields
# ---------------------------------------------------------------------------------------------------------------


class NaturalKeyField(serializers.CharField):
    """A related object named by its natural key (hardware model name, region code).

    Looks names up in `context[cache]` when the caller preloaded them (the importer does, once per file),
    else asks the database. A service passes the object itself: it is accepted when it is a stored row.
    """

    default_error_messages = {"does_not_exist": 'Unknown {what} "{value}".'}

    def __init__(self, *, model: type[HardwareModel] | type[Region], key: str, cache: str, **kwargs: Any) -> None:
        self.model, self.key, self.cache = model, key, cache
        super().__init__(**kwargs)

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, self.model):
            if data.pk is None:
                self.fail("does_not_exist", what=self.model._meta.verbose_name, value=getattr(data, self.key))
            return data
        value = super().to_internal_value(data)
        # The CharField validators (length, NUL, surrogates) apply to the name, not to the object it names.
        serializers.CharField.run_validators(self, value)
        cache = self.context.get(self.cache)
        found = cache.get(value) if cache is not None else self.model.objects.filter(**{self.key: value}).first()
        if found is None:
            self.fail("does_not_exist", what=self.model._meta.verbose_name, value=value)
        return found

    def run_validators(self, value: Any) -> None:
        """Nothing left to check: to_internal_value validated the name before looking it up."""

    def to_representation(self, value: Any) -> str:
        return getattr(value, self.key, value)


class PatternField(serializers.CharField):
    """A CharField whose validators include an ASCII-only pattern.

    The pattern already refuses NUL and surrogate characters, so DRF's per-character checks for them (a real
    cost over 200,000 import rows) are dropped.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.validators = [
            v
            for v in self.validators
            if not isinstance(v, ProhibitNullCharactersValidator | ProhibitSurrogateCharactersValidator)
        ]


class UpperCaseCharField(PatternField):
    """A CharField that upper-cases its input before the validators run (VINs)."""

    def to_internal_value(self, data: Any) -> str:
        return super().to_internal_value(data).upper()


class LowerCaseCharField(PatternField):
    """A CharField that lower-cases its input before the validators run (hex fingerprints)."""

    def to_internal_value(self, data: Any) -> str:
        return super().to_internal_value(data).lower()


class DistinctListField(serializers.ListField):
    """A list whose repeated items are dropped (first occurrence kept): tags and capabilities are sets."""

    def to_internal_value(self, data: Any) -> list[Any]:
        return list(dict.fromkeys(super().to_internal_value(data)))


def choice_field(*choices: str) -> Callable[..., serializers.ChoiceField]:
    """A ChoiceField documented as a string pattern rather than an enum.

    drf-spectacular names enum components after the field ("format", "mode", "scheme"); other apps have
    fields of the same names with other values, and the names would collide.
    """

    @extend_schema_field({"type": "string", "pattern": "^(" + "|".join(choices) + ")$"})
    class OneOfField(serializers.ChoiceField):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(choices=list(choices), **kwargs)

    return OneOfField


class PartitionLayoutSerializer(serializers.Serializer):
    """Documents the partition layout object; the rules are in devices.validators.validate_partition_layout."""

    scheme = choice_field(*PARTITION_SCHEMES)()
    slots = serializers.ListField(
        child=serializers.RegexField(r"^[a-z0-9_]{1,16}$"), min_length=1, max_length=2, required=False
    )
    slot_size_bytes = serializers.IntegerField(min_value=1, max_value=2**62, required=False)


@extend_schema_field(PartitionLayoutSerializer)
class PartitionLayoutField(serializers.DictField):
    """A partition layout, kept exactly as sent (unknown keys are refused by the validator, not dropped)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validators=[validate_partition_layout], **kwargs)


class HealthField(serializers.DictField):
    """A small map of named booleans, e.g. {"modem_attach": true, "gnss_fix": false}."""

    def __init__(self, **kwargs: Any):
        super().__init__(child=serializers.BooleanField(), **kwargs)

    def to_internal_value(self, data: Any) -> dict[str, bool]:
        value = super().to_internal_value(data)
        if len(value) > MAX_HEALTH_ENTRIES:
            raise serializers.ValidationError(f"At most {MAX_HEALTH_ENTRIES} entries.")
        if any(not key or len(key) > MAX_HEALTH_NAME for key in value):
            raise serializers.ValidationError(f"Entry names must have 1 to {MAX_HEALTH_NAME} characters.")
        return value


def _validation_checks(**kwargs: Any) -> serializers.ListField:
    return serializers.ListField(
        child=serializers.ChoiceField(choices=ValidationCheck.choices),
        max_length=len(ValidationCheck),
        validators=[validate_validation_checks],
        **kwargs,
    )


def _budget(low: int, high: int) -> serializers.IntegerField:
    return serializers.IntegerField(min_value=low, max_value=high, required=False, allow_null=True)


# ---------------------------------------------------------------------------------------------------------------
# Hardware models and regions
# ---------------------------------------------------------------------------------------------------------------


class HardwareModelChangesInput(InputSerializer):
    """What may change on a hardware model (devices.services.HardwareModelChanges); the name never does."""

    family = serializers.CharField(max_length=64, required=False)
    revision = serializers.CharField(max_length=32, required=False)
    update_channel = serializers.ChoiceField(choices=UpdateChannel.choices, required=False)
    signing_scheme = serializers.ChoiceField(choices=SigningScheme.choices, required=False)
    validation_checks = _validation_checks(required=False)
    partition_layout = PartitionLayoutField(required=False)


class HardwareModelInput(InputSerializer):
    """A new hardware model."""

    name = serializers.SlugField(max_length=64, help_text="Hardware id, e.g. tcu-4g-r2; never changes.")
    family = serializers.CharField(max_length=64)
    revision = serializers.CharField(max_length=32)
    update_channel = serializers.ChoiceField(choices=UpdateChannel.choices, default=UpdateChannel.STABLE)
    signing_scheme = serializers.ChoiceField(choices=SigningScheme.choices, default=SigningScheme.ECDSA_P256)
    validation_checks = _validation_checks(default=list)
    partition_layout = PartitionLayoutField()


class RegionChangesInput(InputSerializer):
    """A region's name and device load budget; null means "the global default", 0 (budgets) "no limit"."""

    name = serializers.CharField(max_length=100, required=False)
    poll_interval_seconds = _budget(MIN_POLL_SECONDS, MAX_POLL_SECONDS)
    max_checkins_per_window = _budget(0, MAX_BUDGET)
    max_concurrent_downloads = _budget(0, MAX_BUDGET)


class RegionInput(InputSerializer):
    """A new region: a code, a name, an IANA time zone and an optional device load budget."""

    code = serializers.SlugField(max_length=32)
    name = serializers.CharField(max_length=100)
    time_zone = serializers.CharField(max_length=64, validators=[validate_time_zone], help_text="e.g. Europe/Berlin")
    poll_interval_seconds = _budget(MIN_POLL_SECONDS, MAX_POLL_SECONDS)
    max_checkins_per_window = _budget(0, MAX_BUDGET)
    max_concurrent_downloads = _budget(0, MAX_BUDGET)


# ---------------------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------------------


class DeviceInput(InputSerializer):
    """One device as imported or created: shape, patterns, and hardware model and region looked up by name."""

    serial = PatternField(max_length=64, validators=[validate_serial])
    vin = UpperCaseCharField(
        max_length=17, required=False, allow_null=True, allow_blank=True, validators=[validate_vin]
    )
    hardware_model = NaturalKeyField(model=HardwareModel, key="name", cache="hardware_models", max_length=64)
    region = NaturalKeyField(model=Region, key="code", cache="regions", max_length=32)
    vehicle_type = serializers.ChoiceField(choices=VehicleType.choices)
    usage_profile = serializers.ChoiceField(choices=UsageProfile.choices, default=UsageProfile.MIXED)
    tags = DistinctListField(child=serializers.SlugField(max_length=64), max_length=MAX_TAGS, default=list)
    network_capabilities = DistinctListField(
        child=serializers.ChoiceField(choices=NetworkCapability.choices), max_length=10, default=list
    )
    installed_version = PatternField(max_length=64, validators=[validate_semver])
    installed_release_counter = serializers.IntegerField(min_value=0, max_value=MAX_RELEASE_COUNTER, default=0)
    certificate_fingerprint = LowerCaseCharField(
        max_length=64, required=False, allow_null=True, allow_blank=True, validators=[validate_certificate_fingerprint]
    )


class DeviceChangesInput(DeviceInput):
    """Inventory corrections (parse with partial=True); serial and status cannot change here."""

    serial = None  # type: ignore[assignment]


class DeviceReportInput(InputSerializer):
    """What a device reported at check-in about its active slot, as devices.services.device_record_report stores it."""

    version = PatternField(max_length=64, validators=[validate_semver])
    release_counter = serializers.IntegerField(min_value=0, max_value=MAX_RELEASE_COUNTER)
    active_slot = serializers.ChoiceField(choices=SLOT_NAMES, allow_null=True)
    boot_count = serializers.IntegerField(min_value=0, max_value=MAX_RELEASE_COUNTER, allow_null=True)
    health = HealthField(allow_null=True)


# ---------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------


def error_messages(detail: Any, field_name: str = "row") -> Iterator[tuple[str, str]]:
    """(field, message) pairs of a serializer's errors; items of a list field are named "item N: ..."."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            if isinstance(key, int):
                for name, message in error_messages(value, field_name):
                    yield name, f"item {key + 1}: {message}"
            else:
                yield from error_messages(value, str(key) if field_name == "row" else field_name)
    elif isinstance(detail, list):
        for item in detail:
            yield from error_messages(item, field_name)
    else:
        yield field_name, str(detail)


def parse(
    shape: type[serializers.Serializer], values: Mapping[str, Any], *, message: str, partial: bool = False
) -> dict[str, Any]:
    """The values as `shape` parses them; InvalidInput with {field: [messages]} (nothing written) when they do not fit."""
    serializer = shape(data=dict(values), partial=partial)
    if not serializer.is_valid():
        fields: dict[str, list[str]] = {}
        for name, text in error_messages(serializer.errors):
            fields.setdefault(name, []).append(text)
        raise InvalidInput(message, fields=fields)
    return dict(serializer.validated_data)
