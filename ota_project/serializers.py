"""Serializer building blocks shared by every app's API: strict input (unknown fields are errors)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rest_framework import serializers

if TYPE_CHECKING:
    _SerializerBase = serializers.Serializer[Any]
else:
    _SerializerBase = object


class StrictInputMixin(_SerializerBase):
    """Reject fields the serializer does not declare, naming them, instead of silently ignoring them."""

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        initial: Any = getattr(self, "initial_data", None)
        if hasattr(initial, "keys"):
            unknown = sorted(set(initial.keys()) - set(self.fields.keys()))
            if unknown:
                raise serializers.ValidationError({name: ["Unknown field."] for name in unknown})
        return super().validate(attrs)


class InputSerializer(StrictInputMixin, serializers.Serializer):
    """Base for request bodies: shape only, unknown fields refused."""


class ReasonInputSerializer(InputSerializer):
    """A body carrying only a reason (for actions that need one)."""

    reason = serializers.CharField(max_length=2000, allow_blank=False)


class ApiErrorDetailSerializer(serializers.Serializer):
    """code, message and per-field messages (built in get_fields: `fields` is a Serializer attribute)."""

    def get_fields(self) -> dict[str, serializers.Field]:
        return {
            "code": serializers.CharField(),
            "message": serializers.CharField(),
            "fields": serializers.DictField(child=serializers.JSONField(), help_text="Field name -> messages."),
        }


class ApiErrorSerializer(serializers.Serializer):
    """The one error envelope of the API (see ota_project.exceptions): {"error": {"code", "message", "fields"}}."""

    error = ApiErrorDetailSerializer()
