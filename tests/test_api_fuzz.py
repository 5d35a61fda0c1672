"""Schemathesis over /api/schema/: no generated request, valid or not, may produce a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error

from ota_project.roles import Role
from tests.factories import DeviceFactory, FirmwareReleaseFactory, HardwareModelFactory, RegionFactory, UserFactory

# The schema view touches no database, so it is loaded once at collection.
schema = schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture
def keep_test_connection(db):
    """In-process WSGI calls share the test's transaction; like Django's test client, keep the request
    signals from closing that connection between requests."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)


@pytest.fixture
def all_roles_token(keep_test_connection) -> str:
    """A user holding every role, so requests reach the services instead of stopping at the permission check."""
    user = UserFactory.create(username="fuzzer", roles=list(Role.values))
    model = HardwareModelFactory.create(name="tcu-4g-r2")
    region = RegionFactory.create(code="eu-west")
    FirmwareReleaseFactory.create(version="1.0.0", release_counter=1, hardware_models=[model])
    DeviceFactory.create_batch(3, hardware_model=model, region=region, tags=["pilot"])
    return Token.objects.create(user=user).key


@pytest.mark.schemathesis
@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_request_produces_a_server_error(case, all_roles_token):
    case.call_and_validate(headers={"Authorization": f"Token {all_roles_token}"}, checks=[not_a_server_error])
