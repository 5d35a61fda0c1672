"""Request and response shapes of the fleet inventory API (shape only; the rules live in devices.services)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.choices import NetworkCapability, SigningScheme, UpdateChannel, ValidationCheck
from devices.importer import FORMATS, MAX_IMPORT_ROWS, MODES, DeviceRowSerializer
from devices.models import MAX_POLL_SECONDS, MIN_POLL_SECONDS, Device, HardwareModel, Region, Tag
from devices.selectors import device_is_offline
from devices.services import MAX_BUDGET
from devices.validators import validate_partition_layout, validate_time_zone
from ota_project.serializers import InputSerializer


def _choice_field(*choices: str) -> Callable[..., serializers.ChoiceField]:
    """A ChoiceField documented as a string pattern rather than an enum.

    drf-spectacular names enum components after the field ("format", "mode", "scheme"); other apps have
    fields of the same names with other values, and the names would collide.
    """

    @extend_schema_field({"type": "string", "pattern": "^(" + "|".join(choices) + ")$"})
    class OneOfField(serializers.ChoiceField):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(choices=list(choices), **kwargs)

    return OneOfField


FileFormatField = _choice_field(*FORMATS)
JsonFormatField = _choice_field("json")
ModeField = _choice_field(*MODES)
SchemeField = _choice_field("ab", "single")


# ---------------------------------------------------------------------------------------------------------------
# Errors (documentation of the one error envelope every endpoint answers with)
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Hardware models
# ---------------------------------------------------------------------------------------------------------------


class PartitionLayoutSerializer(serializers.Serializer):
    """Documents the partition layout object; the rules are in devices.validators.validate_partition_layout."""

    scheme = SchemeField()
    slots = serializers.ListField(
        child=serializers.RegexField(r"^[a-z0-9_]{1,16}$"), min_length=1, max_length=2, required=False
    )
    slot_size_bytes = serializers.IntegerField(min_value=1, max_value=2**62, required=False)


@extend_schema_field(PartitionLayoutSerializer)
class PartitionLayoutField(serializers.DictField):
    """A partition layout, kept exactly as sent (unknown keys are refused by the validator, not dropped)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(validators=[validate_partition_layout], **kwargs)


class HardwareModelSerializer(serializers.ModelSerializer):
    validation_checks = serializers.ListField(child=serializers.ChoiceField(choices=ValidationCheck.choices))
    partition_layout = PartitionLayoutField()

    class Meta:
        model = HardwareModel
        fields = [
            "id",
            "name",
            "family",
            "revision",
            "update_channel",
            "signing_scheme",
            "validation_checks",
            "partition_layout",
            "created_at",
        ]
        read_only_fields = fields


class HardwareModelCreateInputSerializer(InputSerializer):
    name = serializers.SlugField(max_length=64, help_text="Hardware id, e.g. tcu-4g-r2; never changes.")
    family = serializers.CharField(max_length=64)
    revision = serializers.CharField(max_length=32)
    update_channel = serializers.ChoiceField(choices=UpdateChannel.choices, default=UpdateChannel.STABLE)
    signing_scheme = serializers.ChoiceField(choices=SigningScheme.choices, default=SigningScheme.ECDSA_P256)
    validation_checks = serializers.ListField(
        child=serializers.ChoiceField(choices=ValidationCheck.choices), max_length=len(ValidationCheck), default=list
    )
    partition_layout = PartitionLayoutField()


class HardwareModelUpdateInputSerializer(InputSerializer):
    family = serializers.CharField(max_length=64, required=False)
    revision = serializers.CharField(max_length=32, required=False)
    update_channel = serializers.ChoiceField(choices=UpdateChannel.choices, required=False)
    signing_scheme = serializers.ChoiceField(choices=SigningScheme.choices, required=False)
    validation_checks = serializers.ListField(
        child=serializers.ChoiceField(choices=ValidationCheck.choices), max_length=len(ValidationCheck), required=False
    )
    partition_layout = PartitionLayoutField(required=False)
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)


# ---------------------------------------------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------------------------------------------


class RegionSerializer(serializers.ModelSerializer):
    class Meta:
        model = Region
        fields = [
            "id",
            "code",
            "name",
            "time_zone",
            "poll_interval_seconds",
            "max_checkins_per_window",
            "max_concurrent_downloads",
        ]
        read_only_fields = fields


class RegionUpdateInputSerializer(InputSerializer):
    """A region's name and device load budget; null means "the global default", 0 (budgets) "no limit"."""

    name = serializers.CharField(max_length=100, required=False)
    poll_interval_seconds = serializers.IntegerField(
        min_value=MIN_POLL_SECONDS, max_value=MAX_POLL_SECONDS, required=False, allow_null=True
    )
    max_checkins_per_window = serializers.IntegerField(
        min_value=0, max_value=MAX_BUDGET, required=False, allow_null=True
    )
    max_concurrent_downloads = serializers.IntegerField(
        min_value=0, max_value=MAX_BUDGET, required=False, allow_null=True
    )
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)


class RegionCreateInputSerializer(InputSerializer):
    code = serializers.SlugField(max_length=32)
    name = serializers.CharField(max_length=100)
    time_zone = serializers.CharField(max_length=64, validators=[validate_time_zone], help_text="e.g. Europe/Berlin")
    poll_interval_seconds = serializers.IntegerField(
        min_value=MIN_POLL_SECONDS, max_value=MAX_POLL_SECONDS, required=False, allow_null=True
    )
    max_checkins_per_window = serializers.IntegerField(
        min_value=0, max_value=MAX_BUDGET, required=False, allow_null=True
    )
    max_concurrent_downloads = serializers.IntegerField(
        min_value=0, max_value=MAX_BUDGET, required=False, allow_null=True
    )


# ---------------------------------------------------------------------------------------------------------------
# Devices
# ---------------------------------------------------------------------------------------------------------------


class DeviceSerializer(serializers.ModelSerializer):
    hardware_model: serializers.SlugRelatedField[HardwareModel] = serializers.SlugRelatedField(
        slug_field="name", read_only=True
    )
    region: serializers.SlugRelatedField[Region] = serializers.SlugRelatedField(slug_field="code", read_only=True)
    tags: serializers.SlugRelatedField[Tag] = serializers.SlugRelatedField(slug_field="name", many=True, read_only=True)
    network_capabilities = serializers.ListField(child=serializers.ChoiceField(choices=NetworkCapability.choices))
    has_drift = serializers.BooleanField(help_text="The device reported something other than the inventory expects.")
    reported_health = serializers.DictField(child=serializers.BooleanField(), help_text="Last check-in's health.")
    offline = serializers.SerializerMethodField(
        help_text="Never checked in, or missed OTA_DEVICE_OFFLINE_AFTER_POLLS of its region's poll intervals."
    )

    @extend_schema_field(serializers.BooleanField())
    def get_offline(self, device: Device) -> bool:
        return device_is_offline(device=device)

    class Meta:
        model = Device
        fields = [
            "id",
            "serial",
            "vin",
            "hardware_model",
            "region",
            "vehicle_type",
            "usage_profile",
            "tags",
            "network_capabilities",
            "installed_version",
            "installed_release_counter",
            "reported_version",
            "reported_release_counter",
            "reported_at",
            "reported_active_slot",
            "reported_boot_count",
            "reported_health",
            "has_drift",
            "offline",
            "status",
            "status_reason",
            "certificate_fingerprint",
            "last_seen_at",
            "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class DeviceCreateInputSerializer(DeviceRowSerializer):
    """A new device; hardware_model by name and region by code (the same rules as one import row)."""


class DeviceUpdateInputSerializer(DeviceRowSerializer):
    """Inventory corrections (use with partial=True); serial and status cannot change here."""

    serial = None  # type: ignore[assignment]  # DRF's way to drop a field declared by the parent serializer
    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True)


class DeviceVersionSerializer(serializers.Serializer):
    version = serializers.CharField()
    release_counter = serializers.IntegerField(allow_null=True)


class DeviceReportedVersionSerializer(DeviceVersionSerializer):
    at = serializers.DateTimeField(allow_null=True)


class DeviceDriftSerializer(serializers.Serializer):
    """What the inventory expects a device to run next to what the device last reported."""

    serial = serializers.CharField()
    hardware_model = serializers.CharField(source="hardware_model.name")
    region = serializers.CharField(source="region.code")
    status = serializers.CharField()
    expected = serializers.SerializerMethodField()
    reported = serializers.SerializerMethodField()
    last_seen_at = serializers.DateTimeField(allow_null=True)

    @extend_schema_field(DeviceVersionSerializer)
    def get_expected(self, device: Device) -> dict[str, Any]:
        return {"version": device.installed_version, "release_counter": device.installed_release_counter}

    @extend_schema_field(DeviceReportedVersionSerializer)
    def get_reported(self, device: Device) -> dict[str, Any]:
        return {
            "version": device.reported_version,
            "release_counter": device.reported_release_counter,
            "at": serializers.DateTimeField().to_representation(device.reported_at) if device.reported_at else None,
        }


class FleetVersionCountSerializer(serializers.Serializer):
    version = serializers.CharField()
    devices = serializers.IntegerField()


class FleetVersionsSerializer(serializers.Serializer):
    """How many devices of one hardware model the inventory expects on each installed version."""

    hardware_model = serializers.CharField()
    devices = serializers.IntegerField()
    versions = FleetVersionCountSerializer(many=True)


class DeviceCredentialSerializer(serializers.Serializer):
    """A device credential's state; never its secret or hash."""

    serial = serializers.CharField(source="device.serial")
    issued_at = serializers.DateTimeField(source="created_at")
    revoked_at = serializers.DateTimeField(allow_null=True)
    active = serializers.SerializerMethodField()

    @extend_schema_field(serializers.BooleanField())
    def get_active(self, credential: Any) -> bool:
        return credential.revoked_at is None


class DeviceCredentialIssuedSerializer(serializers.Serializer):
    serial = serializers.CharField()
    secret = serializers.CharField(help_text="Shown only in this answer; only its sha256 is stored.")


# ---------------------------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------------------------


class DeviceImportUploadInputSerializer(InputSerializer):
    """multipart/form-data: a CSV (header row; tags and network_capabilities separated by ';') or JSON file."""

    file = serializers.FileField(help_text="CSV with a header row, or a JSON list of device objects.")
    format = FileFormatField(required=False, help_text="Defaults to the file name's extension (.csv or .json).")
    mode = ModeField(default="create", help_text="create: every serial must be new; upsert: update existing ones.")


@extend_schema_field(DeviceRowSerializer(many=True))
class DeviceRowsField(serializers.ListField):
    """The rows are checked one by one by the importer, so that each error names its row."""


class DeviceImportRowsInputSerializer(InputSerializer):
    """application/json: the rows themselves."""

    format = JsonFormatField(default="json")
    mode = ModeField(default="create", help_text="create: every serial must be new; upsert: update existing ones.")
    rows = DeviceRowsField(allow_empty=False, max_length=MAX_IMPORT_ROWS)


class ImportRowErrorSerializer(serializers.Serializer):
    row = serializers.IntegerField(help_text="CSV: line in the file (the header is line 1); JSON: 1-based position.")
    field = serializers.CharField()
    message = serializers.CharField()


class ImportReportSerializer(serializers.Serializer):
    rows = serializers.IntegerField()
    created = serializers.IntegerField()
    updated = serializers.IntegerField()
    errors = ImportRowErrorSerializer(many=True)  # type: ignore[assignment]  # a declared field: the metaclass takes it off the class, Serializer.errors is untouched
    error_count = serializers.IntegerField()
    format = FileFormatField()
    mode = ModeField()
    sha256 = serializers.CharField()
