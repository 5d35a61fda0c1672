"""Read-only admin for releases, artifacts and signing keys: releases are created through the API or
`create_release` and keys through `keys`, so the services' rules (roles, semver, anti-rollback counter, content
addressing, one key per role, decision record) always apply."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Count, QuerySet
from django.http import HttpRequest

from devices.firmware.models import FirmwareArtifact, FirmwareRelease, SigningKey


class ReadOnlyAdmin(admin.ModelAdmin):
    """Lists and detail pages only: no add, change or delete from the admin."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(FirmwareRelease)
class FirmwareReleaseAdmin(ReadOnlyAdmin):
    list_display = ["version", "release_counter", "hardware_model_names", "artifact_sha256", "created_by", "created_at"]
    list_filter = ["hardware_models", "created_at"]
    search_fields = ["version", "artifact__sha256", "source_revision", "builder", "artifact_name"]
    date_hierarchy = "created_at"
    list_select_related = ["artifact", "created_by"]
    readonly_fields = [
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

    def get_queryset(self, request: HttpRequest) -> QuerySet[FirmwareRelease]:
        return super().get_queryset(request).prefetch_related("hardware_models")

    @admin.display(description="Hardware models")
    def hardware_model_names(self, release: FirmwareRelease) -> str:
        return ", ".join(model.name for model in release.hardware_models.all())

    @admin.display(description="sha256", ordering="artifact__sha256")
    def artifact_sha256(self, release: FirmwareRelease) -> str:
        return release.artifact.sha256


@admin.register(FirmwareArtifact)
class FirmwareArtifactAdmin(ReadOnlyAdmin):
    list_display = ["sha256", "size_bytes", "release_count", "storage_path", "created_at"]
    search_fields = ["sha256"]
    readonly_fields = ["sha256", "size_bytes", "storage_path", "created_at"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[FirmwareArtifact]:
        return super().get_queryset(request).annotate(release_count=Count("releases"))

    @admin.display(description="Releases", ordering="release_count")
    def release_count(self, artifact: FirmwareArtifact) -> int:
        return artifact.release_count  # type: ignore[attr-defined]  # annotated by get_queryset above


@admin.register(SigningKey)
class SigningKeyAdmin(ReadOnlyAdmin):
    """The key registry, read only: keys change through `manage.py keys` (security officers, decision record)."""

    list_display = ["role", "state", "algorithm", "location", "key_id", "created_by", "created_at"]
    list_filter = ["role", "state", "location", "algorithm"]
    search_fields = ["key_id", "role"]
    list_select_related = ["created_by"]
    readonly_fields = [field.name for field in SigningKey._meta.fields]
