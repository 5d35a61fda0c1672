"""Device API bodies: shape only, strict at every level (unknown fields refused), every size bounded."""

from __future__ import annotations

import functools
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from django.utils import timezone
from rest_framework import serializers
from rest_framework.fields import empty

from devices.attestation import evidence_shape_errors
from devices.inputs import HealthField
from devices.validators import MAX_RELEASE_COUNTER, SLOT_NAMES
from rollouts.choices import DEPLOYMENT_REPORTABLE

MAX_TELEMETRY_SAMPLES = 500
# "untrusted": the signed metadata did not verify (image repository, director, or the image against them) - the
# device refused the update; the server records a security event for each such report.
FAILURE_CLASSES = ("download", "install", "boot", "health", "verify", "untrusted", "space", "power", "other")


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
    attestation = serializers.JSONField(
        required=False,
        help_text="Evidence over the previous answer's `attestation_nonce`: {nonce, measurements: "
        "{booted_image_sha256}, lineage: [sha256 of each committed image, oldest first], signature: base64 ECDSA "
        "P-256/SHA-256 by the device certificate's key over devices.agent.attestation.evidence_message}.",
    )

    def validate_attestation(self, value: Any) -> Any:
        errors = evidence_shape_errors(value)
        if errors:
            raise serializers.ValidationError([f"{name}: {'; '.join(texts)}" for name, texts in errors.items()])
        return value

    def validate_slots(self, value: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(value) - set(SLOT_NAMES))
        if unknown or not value:
            raise serializers.ValidationError(f"Slots are {', '.join(SLOT_NAMES)}; at least one is required.")
        return value

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if attrs["active_slot"] not in attrs["slots"]:
            raise serializers.ValidationError({"active_slot": ["The active slot must be among the slots."]})
        return attrs


_per_thread = threading.local()


def _validated(kind: type[StrictSerializer], data: Any) -> dict[str, Any] | None:
    """`data` as a `kind` serializer validates it, or None when it refuses it (the full path then answers the 400
    naming each field).

    One serializer per thread and kind, reused: DRF deep-copies every declared field into each new serializer, half
    of a check-in's validation time. `run_validation` keeps no state between calls (unknown fields are checked
    against the declared ones, not against `initial_data`).
    """
    reused: dict[type[StrictSerializer], StrictSerializer] | None = getattr(_per_thread, "serializers", None)
    if reused is None:
        reused = _per_thread.serializers = {}
    serializer = reused.get(kind)
    if serializer is None:
        serializer = reused[kind] = kind()
    try:
        validated: dict[str, Any] = serializer.run_validation(data)
    except serializers.ValidationError:
        return None
    return validated


def checkin_input_valid(data: Any) -> dict[str, Any] | None:
    """The check-in body as CheckinInputSerializer validates it, or None when it refuses it (see _validated)."""
    return _validated(CheckinInputSerializer, data)


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


class _Column(NamedTuple):
    """One sample field as the batch validator checks it: an int in [low, high], or a bool."""

    name: str
    boolean: bool
    low: int
    high: int


class _SampleSpec(NamedTuple):
    """The sample serializer compiled once: its field names, KPI checks and defaults."""

    allowed: frozenset[str]
    columns: tuple[_Column, ...]
    defaults: dict[str, Any]


@functools.cache
def _sample_spec() -> _SampleSpec:
    """Compiled from TelemetrySampleSerializer itself, so the loop and the serializer share one definition."""
    fields = TelemetrySampleSerializer().fields
    columns = []
    for name, field in fields.items():
        if isinstance(field, serializers.BooleanField):
            columns.append(_Column(name, True, 0, 1))
        elif isinstance(field, serializers.IntegerField):
            low = field.min_value if field.min_value is not None else -(2**63)
            high = field.max_value if field.max_value is not None else 2**63 - 1
            columns.append(_Column(name, False, int(low), int(high)))
    defaults = {name: field.default for name, field in fields.items() if field.default is not empty}
    return _SampleSpec(frozenset(fields), tuple(columns), defaults)


class TelemetrySamplesField(serializers.ListField):
    """The samples of a batch, validated as a whole: a tight loop over plain, well-typed samples (ints in range,
    booleans, ISO 8601 times), the field-by-field DRF serializer only when the batch holds anything else.

    The fallback decides every case the loop does not accept, so the answers (values, and the 400 naming each bad
    record and field) are the serializer's own; any bad record refuses the whole batch, as before.
    """

    def __init__(self, **kwargs: Any):
        super().__init__(child=TelemetrySampleSerializer(), **kwargs)

    def to_internal_value(self, data: Any) -> list[dict[str, Any]]:
        fast = self.batch_validate(data) if type(data) is list and data else None
        return fast if fast is not None else super().to_internal_value(data)

    def batch_validate(self, samples: list[Any]) -> list[dict[str, Any]] | None:
        """The validated samples, or None when any one needs the serializer (to accept it or to say why not).

        Column by column: each check is a comprehension or a builtin over all samples at once (types as a set,
        ranges as min and max), so the cost per sample is a few dict lookups.
        """
        allowed, columns, defaults = _sample_spec()
        if {type(sample) for sample in samples} != {dict} or not allowed.issuperset(set().union(*samples)):
            return None
        texts = [sample.get("reported_at") for sample in samples]
        if {type(text) for text in texts} != {str}:
            return None
        zone = timezone.get_current_timezone()
        try:
            parsed = list(map(datetime.fromisoformat, texts))  # what django's parse_datetime tries first
            if any(at.tzinfo is None for at in parsed):
                return None  # made aware by the serializer, with its checks
            times = [at.astimezone(zone) for at in parsed]
        except (ValueError, OverflowError):
            return None
        for name, boolean, low, high in columns:
            present = [value for sample in samples if (value := sample.get(name)) is not None]
            if not present:
                continue
            expected: set[type] = {bool} if boolean else {int}
            if {type(value) for value in present} != expected:
                return None
            if not boolean and (min(present) < low or max(present) > high):
                return None
        return [{**defaults, **sample, "reported_at": at} for sample, at in zip(samples, times, strict=True)]


class TelemetryInputSerializer(StrictSerializer):
    """A batch of KPI samples; the batch id makes a re-send after a dropped response count once."""

    batch_id = serializers.RegexField(
        r"^[A-Za-z0-9._:-]{1,64}$",
        required=False,
        help_text="The device's id for this batch (1-64 of A-Z a-z 0-9 . _ : -); a batch re-sent with the same id "
        "is not counted twice. Without one, the sha256 of the samples serves as the id.",
    )
    samples = TelemetrySamplesField(min_length=1, max_length=MAX_TELEMETRY_SAMPLES)


def telemetry_input_valid(data: Any) -> dict[str, Any] | None:
    """The telemetry body as TelemetryInputSerializer validates it, or None when it refuses it (see _validated)."""
    return _validated(TelemetryInputSerializer, data)


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
    director = serializers.CharField(
        allow_null=True,
        required=False,
        help_text="The director's signed targets for this device (TUF JSON, as signed), or null without a director.",
    )


class CheckinOutputSerializer(serializers.Serializer):
    poll_interval_seconds = serializers.IntegerField()
    offer = OfferOutputSerializer(allow_null=True)
    attestation_nonce = serializers.CharField(
        required=False, help_text="Over a device certificate: the nonce the next check-in's evidence signs (used once)."
    )
    attestation_required = serializers.BooleanField(
        required=False, help_text="An offer waits for evidence over `attestation_nonce`: check in again now."
    )


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
