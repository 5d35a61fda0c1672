"""The device API's OpenAPI document: every /device/v1/ route, the Device scheme, kept out of /api/schema/."""

from __future__ import annotations

import re

import pytest
from django.urls import URLPattern, URLResolver, get_resolver

pytestmark = pytest.mark.django_db

DEVICE_SCHEMA = "/device/v1/schema/"
TLS_REFUSED = "/device/v1/tls-refused/"  # nginx's hand-off of a refused client certificate: not a device endpoint
VOUCH = "/device/v1/artifacts/{sha256}/vouch/"  # nginx's auth_request for a range (proxy secret): not a device endpoint


def _device_routes() -> set[str]:
    """Every route under /device/v1/ as an OpenAPI path template (path converters -> {name})."""
    routes: set[str] = set()

    def walk(patterns, prefix: str) -> None:
        for entry in patterns:
            text = str(entry.pattern).lstrip("^").rstrip("$")
            if isinstance(entry, URLResolver):
                walk(entry.url_patterns, prefix + text)
            elif isinstance(entry, URLPattern):
                routes.add("/" + prefix + text)

    walk(get_resolver().url_patterns, "")

    def template(match: re.Match[str]) -> str:
        return "{" + (match[1] or match[2]) + "}"

    templated = {re.sub(r"\(\?P<(\w+)>[^)]*\)|<(?:\w+:)?(\w+)>", template, r) for r in routes}
    return {route for route in templated if route.startswith("/device/v1/")}


def test_every_device_route_is_documented_with_the_device_scheme(api_client):
    response = api_client.get(DEVICE_SCHEMA, {"format": "json"})
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.") and schema["info"]["title"] == "OTA device API"
    routes = _device_routes() - {DEVICE_SCHEMA, TLS_REFUSED, VOUCH}
    assert routes == {
        "/device/v1/checkin/",
        "/device/v1/artifacts/{sha256}/",
        "/device/v1/deployments/{deployment_id}/status/",
        "/device/v1/telemetry/",
        "/device/v1/director/targets.json",
        "/device/v1/director/{version}.root.json",
    }
    assert set(schema["paths"]) == routes
    scheme = schema["components"]["securitySchemes"]["DeviceCredential"]
    assert scheme["type"] == "mutualTLS"  # the verified client certificate is the device's identity
    assert "Device <serial>:<secret>" in scheme["description"] and "OTA_DEVICE_AUTH=secret" in scheme["description"]
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation["security"] == [{"DeviceCredential": []}], (path, method)
            assert "401" in operation["responses"], (path, method)
    checkin = schema["paths"]["/device/v1/checkin/"]["post"]["responses"]
    assert "Retry-After" in checkin["429"]["headers"]
    assert "Retry-After" in schema["paths"]["/device/v1/artifacts/{sha256}/"]["get"]["responses"]["429"]["headers"]
    assert "202" in schema["paths"]["/device/v1/telemetry/"]["post"]["responses"]
    assert "409" in schema["paths"]["/device/v1/deployments/{deployment_id}/status/"]["post"]["responses"]


def test_the_management_schema_still_leaves_the_device_api_out(client_for, auditor):
    schema = client_for(auditor).get("/api/schema/", {"format": "json"}).json()
    assert schema["paths"] and not [path for path in schema["paths"] if path.startswith("/device/")]
    assert "DeviceCredential" not in schema.get("components", {}).get("securitySchemes", {})
    assert "/api/v1/devices/{serial}/credential/revoke/" in schema["paths"]
    assert "patch" in schema["paths"]["/api/v1/regions/{code}/"]


def test_the_device_schema_is_also_served_as_yaml(api_client):
    response = api_client.get(DEVICE_SCHEMA)
    assert response.status_code == 200 and b"/device/v1/checkin/" in response.content
