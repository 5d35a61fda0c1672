"""Request and response shapes of the fleet inventory API (shape only; the rules live in devices.services)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.choices import NetworkCapability, ValidationCheck
from devices.importer import FORMATS, MAX_IMPORT_ROWS, MODES
from devices.inputs import (
    DeviceChangesInput,
    DeviceInput,
    HardwareModelChangesInput,
    HardwareModelInput,
    PartitionLayoutField,
    RegionChangesInput,
    RegionInput,
    choice_field,
)
from devices.models import Device, HardwareModel, Region, Tag
from devices.selectors import device_is_offline
from devices.validators import MAX_REASON_LENGTH
from ota_project.serializers import InputSerializer

FileFormatField = choice_field(*FORMATS)
JsonFormatField = choice_field("json")
ModeField = choice_field(*MODES)


# ---------------------------------------------------------------------------------------------------------------
# Errors (documentation of the one error envelope every endpoint answers with)
# ---------------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------------
# Hardware models
# ---------------------------------------------------------------------------------------------------------------


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


class HardwareModelCreateInputSerializer(HardwareModelInput):
    """A new hardware model (devices.inputs.HardwareModelInput)."""


class HardwareModelUpdateInputSerializer(HardwareModelChangesInput):
    """What may change on a hardware model, and why."""

    reason = serializers.CharField(max_length=MAX_REASON_LENGTH, required=False, allow_blank=True)


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


class RegionUpdateInputSerializer(RegionChangesInput):
    """A region's name and device load budget; null means "the global default", 0 (budgets) "no limit"."""

    reason = serializers.CharField(max_length=MAX_REASON_LENGTH, required=False, allow_blank=True)


class RegionCreateInputSerializer(RegionInput):
    """A new region (devices.inputs.RegionInput)."""


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


class DeviceRowSerializer(DeviceInput):
    """One import row: the same shape as a new device (devices.inputs.DeviceInput)."""


class DeviceCreateInputSerializer(DeviceInput):
    """A new device; hardware_model by name and region by code (the same rules as one import row)."""


class DeviceUpdateInputSerializer(DeviceChangesInput):
    """Inventory corrections (use with partial=True); serial and status cannot change here."""

    reason = serializers.CharField(max_length=MAX_REASON_LENGTH, required=False, allow_blank=True)


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
