"""The device API's own OpenAPI document, served at /device/v1/schema/ (the management schema excludes it)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.views import SpectacularAPIView
from rest_framework.permissions import AllowAny

DEVICE_PREFIX = "/device/v1/"
SECURITY_SCHEME = "DeviceCredential"


class DeviceCredentialScheme(OpenApiAuthenticationExtension):
    """Documents devices.edge.identity.DeviceAuthentication as the device API's security scheme."""

    target_class = "devices.edge.identity.DeviceAuthentication"
    name = SECURITY_SCHEME

    def get_security_definition(self, auto_schema: Any) -> dict[str, Any]:
        return {
            "type": "mutualTLS",
            "description": (
                "The device's client certificate (EC P-256, issued by `python manage.py devices provision`), "
                "verified by nginx on the device port against the device CA. A certificate bound to no active "
                "device (revoked, superseded, unknown), or a revoked or decommissioned device, all answer the same "
                "401. Development mode only (OTA_DEVICE_AUTH=secret): `Authorization: Device <serial>:<secret>`."
            ),
        }


def device_api_only(endpoints: list[tuple[str, str, str, Any]], **kwargs: Any) -> list[tuple[str, str, str, Any]]:
    """Keep the /device/v1/ endpoints, without this schema view itself."""
    return [
        endpoint
        for endpoint in endpoints
        if endpoint[0].startswith(DEVICE_PREFIX) and getattr(endpoint[3], "cls", None) is not DeviceSchemaView
    ]


def retry_after_headers(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """Document the Retry-After header on every 429 answer (drf-spectacular has no per-response headers here)."""
    for operations in result.get("paths", {}).values():
        for operation in operations.values():
            throttled = operation.get("responses", {}).get("429")
            if throttled is not None:
                throttled["headers"] = {
                    "Retry-After": {
                        "description": "Seconds to wait before the next attempt.",
                        "schema": {"type": "integer", "minimum": 1},
                    }
                }
    return result


class DeviceSchemaView(SpectacularAPIView):
    """The OpenAPI 3 document of /device/v1/ (JSON or YAML), public like the management schema."""

    permission_classes = [AllowAny]
    authentication_classes: list[Any] = []
    custom_settings = {
        "TITLE": "OTA device API",
        "DESCRIPTION": (
            "What telematics units talk to: check-in (poll interval, offers), artifact download with resume, "
            "per-deployment status reports with sequence numbers, and telemetry batches. Every error uses the "
            'envelope {"error": {"code", "message", "fields"}}. Load shaping per region answers 429 with '
            "Retry-After."
        ),
        "VERSION": "1",
        "PREPROCESSING_HOOKS": ["devices.edge.schema.device_api_only"],
        "POSTPROCESSING_HOOKS": [
            "drf_spectacular.hooks.postprocess_schema_enums",
            "devices.edge.schema.retry_after_headers",
        ],
        "SCHEMA_PATH_PREFIX": "/device/v1",
    }
