"""Schemathesis over /device/v1/schema/: no generated request from an authenticated device may produce a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from django.core.cache import caches
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from devices.credentials import device_credential_issue
from ota_project.roles import Role
from tests.factories import DeviceFactory, HardwareModelFactory, RegionFactory, UserFactory

schema = schemathesis.openapi.from_wsgi("/device/v1/schema/?format=json", get_wsgi_application())


@pytest.fixture
def device_header(db) -> Iterator[str]:
    """A credentialed device in a region with a tight budget, so 429 paths are exercised as well."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    caches["default"].clear()
    try:
        region = RegionFactory.create(code="eu-west", max_checkins_per_window=5, max_concurrent_downloads=1)
        device = DeviceFactory.create(hardware_model=HardwareModelFactory.create(name="tcu-4g-r2"), region=region)
        secret = device_credential_issue(actor=UserFactory.create(roles=[Role.OPERATOR]), device=device)
        yield f"Device {device.serial}:{secret}"
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
        caches["default"].clear()


@pytest.mark.schemathesis
@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_device_request_produces_a_server_error(case, device_header):
    case.call_and_validate(headers={"Authorization": device_header}, checks=[not_a_server_error])
