"""Request and response shapes for firmware releases (shape only: the rules live in devices/firmware/services.py)."""

from __future__ import annotations

from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from devices.firmware.models import FirmwareRelease
from devices.firmware.services import NOTES_MAX_LENGTH, RELEASE_COUNTER_MAX
from devices.firmware.storage import validate_artifact_name
from devices.firmware.uploads import client_file_name
from devices.firmware.validators import (
    BUILDER_MAX_LENGTH,
    SBOM_REF_MAX_LENGTH,
    SEMVER_PATTERN,
    SOURCE_REVISION_PATTERN,
    VERSION_MAX_LENGTH,
)
from devices.models import HardwareModel
from ota_project.serializers import InputSerializer

MAX_HARDWARE_MODELS = 100


class NameListField(serializers.ListField):
    """A list of names; each item may itself be comma-separated (`a,b` or repeated form fields)."""

    def to_internal_value(self, data: Any) -> list[Any]:
        if isinstance(data, str):
            data = [data]
        if isinstance(data, list | tuple):
            data = [part.strip() for item in data for part in (item.split(",") if isinstance(item, str) else [item])]
            data = [part for part in data if part != ""]
        return super().to_internal_value(data)


class ReleaseCreateInputSerializer(InputSerializer):
    """Multipart body for creating a release: the image and its metadata."""

    file = serializers.FileField(
        allow_empty_file=False,
        use_url=False,
        help_text="The firmware image. Its name must be a plain file name (letters, digits, '.', '_', '-').",
    )
    version = serializers.RegexField(
        SEMVER_PATTERN,
        max_length=VERSION_MAX_LENGTH,
        help_text="Semantic version (semver.org 2.0.0), e.g. 2.4.1 or 2.5.0-rc.1.",
        error_messages={"invalid": "Enter a semantic version such as 2.4.1 or 2.5.0-rc.1+build.7 (semver.org 2.0.0)."},
    )
    release_counter = serializers.IntegerField(
        min_value=1,
        max_value=RELEASE_COUNTER_MAX,
        help_text="Anti-rollback counter; must exceed every earlier release's counter for each hardware model.",
    )
    hardware_models = NameListField(
        child=serializers.SlugField(max_length=64),
        allow_empty=False,
        max_length=MAX_HARDWARE_MODELS,
        help_text="Compatible hardware model names (repeat the field or separate with commas).",
    )
    source_revision = serializers.RegexField(
        SOURCE_REVISION_PATTERN,
        max_length=40,
        help_text="Git commit the image was built from (7-40 hex characters).",
        error_messages={"invalid": "Enter the git commit the image was built from: 7 to 40 hexadecimal characters."},
    )
    builder = serializers.CharField(max_length=BUILDER_MAX_LENGTH, help_text="CI job or host that built the image.")
    sbom_ref = serializers.CharField(
        max_length=SBOM_REF_MAX_LENGTH,
        required=False,
        allow_blank=True,
        default="",
        help_text="SBOM location: an https/http/urn/oci/s3/gs URI or sha256:<64 hex>.",
    )
    notes = serializers.CharField(max_length=NOTES_MAX_LENGTH, required=False, allow_blank=True, default="")

    def validate_file(self, value: Any) -> Any:
        initial: Any = getattr(self, "initial_data", None)
        if hasattr(initial, "getlist") and len(initial.getlist("file")) > 1:
            raise serializers.ValidationError("Send exactly one file.")
        try:
            validate_artifact_name(client_file_name(value))
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.messages) from exc
        return value


class ReleaseArtifactSerializer(serializers.Serializer):
    """The stored image: its digest (computed by the server) and size."""

    sha256 = serializers.CharField(read_only=True)
    size_bytes = serializers.IntegerField(read_only=True)


class ReleaseOutputSerializer(serializers.ModelSerializer):
    """A firmware release as the API shows it."""

    hardware_models: serializers.SlugRelatedField[HardwareModel] = serializers.SlugRelatedField(
        many=True, read_only=True, slug_field="name"
    )
    artifact = ReleaseArtifactSerializer(read_only=True)
    created_by = serializers.SerializerMethodField()

    class Meta:
        model = FirmwareRelease
        fields = [
            "id",
            "version",
            "release_counter",
            "hardware_models",
            "artifact",
            "artifact_name",
            "source_revision",
            "builder",
            "sbom_ref",
            "notes",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.CharField())
    def get_created_by(self, release: FirmwareRelease) -> str:
        return release.created_by.get_username()
