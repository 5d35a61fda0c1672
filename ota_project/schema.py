"""OpenAPI schema hooks: /api/schema/ documents the management API only (the device protocol is separate)."""

from typing import Any


def management_api_only(endpoints: list[tuple[str, str, str, Any]], **kwargs: Any) -> list[tuple[str, str, str, Any]]:
    """Keep /api/ endpoints; /device/v1/ authenticates devices, not people, and is documented with the agent."""
    return [endpoint for endpoint in endpoints if endpoint[0].startswith("/api/")]
