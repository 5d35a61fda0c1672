"""Shapes of the auditor's API: decision records, chain verdict, public key, export query, error envelope."""

from __future__ import annotations

from typing import Any

from rest_framework import serializers

from approvals.audit.choices import SECURITY_SEVERITY, SecurityEventKind, SecuritySeverity
from approvals.audit.export import EXPORT_FORMATS, MAX_SEQ
from approvals.audit.models import DecisionRecord, SecurityEvent
from ota_project.serializers import InputSerializer

# The exact form `created_at` is hashed in, so that a row from the API can be re-hashed by an auditor.
HASHED_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class AuditRecordSerializer(serializers.ModelSerializer):
    """One record as it is hashed: the payload fields plus `hash` (sha256 over their canonical JSON)."""

    created_at = serializers.DateTimeField(format=HASHED_TIMESTAMP_FORMAT, read_only=True)
    actor = serializers.CharField(source="actor_name", read_only=True, help_text="Username or system:<component>.")
    actor_id = serializers.IntegerField(read_only=True, allow_null=True)

    class Meta:
        model = DecisionRecord
        fields = [
            "seq",
            "created_at",
            "actor",
            "actor_id",
            "action",
            "object_type",
            "object_id",
            "revision",
            "before",
            "after",
            "reason",
            "prev_hash",
            "step_key",
            "hash",
        ]
        read_only_fields = fields


class ChainVerdictSerializer(serializers.Serializer):
    """The result of walking the whole chain from the genesis hash against signatures and signed checkpoints."""

    ok = serializers.BooleanField()
    length = serializers.IntegerField(help_text="Records walked (up to and including the first broken one).")
    broken_seq = serializers.IntegerField(
        allow_null=True, help_text="The first broken record, if any (null when records are missing at the end)."
    )
    problem = serializers.CharField(
        allow_blank=True, help_text="What is wrong, e.g. records deleted against a signed checkpoint."
    )
    head_hash = serializers.CharField(help_text="Hash of the last intact record (the genesis hash if none).")


class AuditPublicKeySerializer(serializers.Serializer):
    """The server audit key that signs export manifests, for auditors to pin."""

    algorithm = serializers.CharField()
    key_id = serializers.CharField(help_text="sha256 (hex) of the raw 32-byte Ed25519 public key.")
    public_key_pem = serializers.CharField()


class ExportQuerySerializer(InputSerializer):
    """Query of an export: the records format and an optional seq range and created_at range [since, until)."""

    format = serializers.ChoiceField(choices=EXPORT_FORMATS, default="jsonl", help_text="Format of the records file.")
    from_seq = serializers.IntegerField(min_value=1, max_value=MAX_SEQ, required=False, help_text="First seq.")
    to_seq = serializers.IntegerField(min_value=1, max_value=MAX_SEQ, required=False, help_text="Last seq.")
    since = serializers.DateTimeField(required=False, help_text="Records created at or after this time.")
    until = serializers.DateTimeField(required=False, help_text="Records created before this time.")

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        attrs = super().validate(attrs)
        if "from_seq" in attrs and "to_seq" in attrs and attrs["from_seq"] > attrs["to_seq"]:
            raise serializers.ValidationError({"to_seq": ["Must not be smaller than from_seq."]})
        if "since" in attrs and "until" in attrs and attrs["since"] >= attrs["until"]:
            raise serializers.ValidationError({"until": ["Must be later than since."]})
        return attrs


class SecurityEventSerializer(serializers.ModelSerializer):
    """One aggregate row: `count` refusals of `kind` from `source` by one key within the bucket starting `bucket`."""

    severity = serializers.SerializerMethodField()

    class Meta:
        model = SecurityEvent
        fields = [
            "id",
            "kind",
            "severity",
            "source",
            "bucket",
            "key",
            "actor_id",
            "actor_name",
            "device_serial",
            "address",
            "subject",
            "message",
            "count",
            "first_at",
            "last_at",
        ]
        read_only_fields = fields

    def get_severity(self, event: SecurityEvent) -> str:
        return str(SECURITY_SEVERITY.get(event.kind, SecuritySeverity.MEDIUM))


class SecurityKindCountSerializer(serializers.Serializer):
    """Refusals of one kind over the last 24 hours and 7 days."""

    kind = serializers.ChoiceField(choices=SecurityEventKind.choices)
    label = serializers.CharField()  # type: ignore[assignment]  # a declared field: the metaclass takes it off the class, Field.label is untouched
    severity = serializers.ChoiceField(choices=SecuritySeverity.choices)
    last_24h = serializers.IntegerField()
    last_7d = serializers.IntegerField()


class SecuritySummarySerializer(serializers.Serializer):
    """Counts of refusals per kind (every kind listed, zero included) at `generated_at`."""

    generated_at = serializers.DateTimeField()
    total_24h = serializers.IntegerField()
    total_7d = serializers.IntegerField()
    kinds = SecurityKindCountSerializer(many=True)
