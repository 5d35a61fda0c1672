"""Every operation in the OpenAPI schema: anonymous callers get 401, users without a role 403."""

from __future__ import annotations

import re

import pytest
from drf_spectacular.generators import SchemaGenerator

from tests.factories import UserFactory

PUBLIC = {("post", "/api/v1/auth/token/")}


def _operations() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return sorted(
        (method, path)
        for path, item in schema["paths"].items()
        for method in item
        if method in {"get", "post", "put", "patch", "delete"} and (method, path) not in PUBLIC
    )


OPERATIONS = _operations()


def _concrete(path: str) -> str:
    # Path parameters get a value that exists nowhere; the permission check must answer before any lookup.
    return re.sub(r"\{[^}]+\}", "999999", path)


def test_the_schema_documents_every_app():
    paths = {path for _, path in OPERATIONS}
    for prefix in (
        "/api/v1/changes/",
        "/api/v1/devices/",
        "/api/v1/releases/",
        "/api/v1/audit/",
        "/api/v1/hardware-models/",
    ):
        assert any(p.startswith(prefix) for p in paths), prefix


@pytest.mark.django_db
@pytest.mark.parametrize(("method", "path"), OPERATIONS)
def test_anonymous_is_401_and_roleless_user_is_403(client_for, method, path):
    url = _concrete(path)
    assert getattr(client_for(None), method)(url, {}, format="json").status_code == 401
    roleless = UserFactory.create(username="no-role")
    assert getattr(client_for(roleless), method)(url, {}, format="json").status_code == 403
