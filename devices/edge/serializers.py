"""Device API bodies: shape only, strict at every level (unknown fields refused), every size bounded."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rest_framework import serializers

from devices.inputs import HealthField
from devices.validators import MAX_RELEASE_COUNTER, SLOT_NAMES
from rollouts.choices import DEPLOYMENT_REPORTABLE

MAX_TELEMETRY_SAMPLES = 500
FAILURE_CLASSES = ("download", "install", "boot", "health", "verify", "space", "power", "other")


class StrictSerializer(serializers.Serializer):
    """Unknown fields are a 400 naming them, also in nested bodies (ota_project's mixin sees only the root)."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            unknown = sorted(str(name) for name in set(data) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({name[:64]: ["Unknown field."] for name in unknown[:20]})
        return super().to_internal_value(data)


class SlotSerializer(StrictSerializer):
    version = serializers.CharField(max_length=64)
    release_counter = serializers.IntegerField(min_value=0, max_value=MAX_RELEASE_COUNTER)


class CheckinInputSerializer(StrictSerializer):
    """What a device reports at check-in: its slots, the active one, boot count and a health summary."""

    slots = serializers.DictField(child=SlotSerializer())
    active_slot = serializers.ChoiceField(choices=SLOT_NAMES)
    boot_count = serializers.IntegerField(min_value=0, max_value=MAX_RELEASE_COUNTER)
    health = HealthField(required=False, default=dict)

    def validate_slots(self, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(SLOT_NAMES))
        if unknown or not value:
            raise serializers.ValidationError(f"Slots are {', '.join(SLOT_NAMES)}; at least one is required.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["active_slot"] not in attrs["slots"]:
            raise serializers.ValidationError({"active_slot": ["The active slot must be among the slots."]})
        return attrs


class StatusInputSerializer(StrictSerializer):
    """One status report about one deployment, with the device's sequence number."""

    seq = serializers.IntegerField(min_value=0, max_value=2**62)
    status = serializers.ChoiceField(choices=sorted(DEPLOYMENT_REPORTABLE))
    detail = serializers.CharField(max_length=500, required=False, allow_blank=True, default="")
    booted_version = serializers.CharField(max_length=64, required=False, allow_blank=True, default="")
    health_passed = serializers.BooleanField(required=False, default=False)
    failure_class = serializers.ChoiceField(choices=FAILURE_CLASSES, required=False, allow_blank=True, default="")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["status"] == "succeeded":
            errors = {}
            if not attrs["booted_version"]:
                errors["booted_version"] = ["Required with succeeded."]
            if not attrs["health_passed"]:
                errors["health_passed"] = ["Must be true with succeeded."]
            if errors:
                raise serializers.ValidationError(errors)
        return attrs


class TelemetrySampleSerializer(StrictSerializer):
    """One KPI sample: only what health gates and KPIs need."""

    deployment_id = serializers.IntegerField(min_value=1, required=False, allow_null=True, default=None)
    reported_at = serializers.DateTimeField()
    install_duration_s = serializers.IntegerField(min_value=0, max_value=7 * 86400, required=False, allow_null=True)
    boot_time_s = serializers.IntegerField(min_value=0, max_value=3600, required=False, allow_null=True)
    unexpected_reboots = serializers.IntegerField(min_value=0, max_value=10_000, required=False, allow_null=True)
    gps_fix_s = serializers.IntegerField(min_value=0, max_value=86400, required=False, allow_null=True)
    sensor_calibrated = serializers.BooleanField(required=False, allow_null=True)
    link_kbps = serializers.IntegerField(min_value=0, max_value=10_000_000, required=False, allow_null=True)


class TelemetryInputSerializer(StrictSerializer):
    """A batch of KPI samples; the batch id makes a re-send after a dropped response count once."""

    batch_id = serializers.RegexField(
        r"^[A-Za-z0-9._:-]{1,64}$",
        required=False,
        help_text="The device's id for this batch (1-64 of A-Z a-z 0-9 . _ : -); a batch re-sent with the same id "
        "is not counted twice. Without one, the sha256 of the samples serves as the id.",
    )
    samples = serializers.ListField(child=TelemetrySampleSerializer(), min_length=1, max_length=MAX_TELEMETRY_SAMPLES)


class ArtifactOutputSerializer(serializers.Serializer):
    sha256 = serializers.CharField()
    length = serializers.IntegerField()
    url = serializers.CharField()


class OfferOutputSerializer(serializers.Serializer):
    deployment_id = serializers.IntegerField()
    kind = serializers.CharField()
    release_version = serializers.CharField()
    release_counter = serializers.IntegerField()
    artifact = ArtifactOutputSerializer()
    deadline_at = serializers.DateTimeField(allow_null=True)


class CheckinOutputSerializer(serializers.Serializer):
    poll_interval_seconds = serializers.IntegerField()
    offer = OfferOutputSerializer(allow_null=True)


class StatusOutputSerializer(serializers.Serializer):
    deployment_id = serializers.IntegerField()
    status = serializers.CharField()
    last_seq = serializers.IntegerField()
    applied = serializers.BooleanField()
    deadline_at = serializers.DateTimeField(allow_null=True)


class TelemetryOutputSerializer(serializers.Serializer):
    accepted = serializers.IntegerField(help_text="Samples in the accepted batch (processed asynchronously).")
    batch_id = serializers.CharField(help_text="The batch's id: the device's, or sha256:<hex> of the samples.")
    duplicate = serializers.BooleanField(help_text="True when this batch had been accepted before (nothing added).")
