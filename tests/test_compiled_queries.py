"""A queryset compiled once per connection answers for every key exactly as the queryset itself would."""

from __future__ import annotations

import threading

import pytest
from django.db import connection
from django.db.models import Count, QuerySet
from django.test.utils import CaptureQueriesContext

from devices.models import Device
from ota_project.compiled_queries import CompiledQuery
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db(transaction=True)


def _devices_of_region(region_id: int) -> QuerySet[Device]:
    return (
        Device.objects.select_related("region", "hardware_model")
        .annotate(tag_count=Count("tags"))
        .filter(region_id=region_id)
        .order_by("serial")
    )


def test_each_key_gets_the_rows_the_queryset_gives_with_related_rows_and_annotations():
    first, second = DeviceFactory.create(), DeviceFactory.create()
    compiled = CompiledQuery(_devices_of_region, stand_in=987_654_321)
    for device in (first, second):
        with CaptureQueriesContext(connection) as queries:
            (found,) = compiled(device.region_id)
            assert (found.region.code, found.hardware_model.name, found.tag_count) == (  # type: ignore[attr-defined]  # the annotation
                device.region.code,
                device.hardware_model.name,
                0,
            )
        assert len(queries) == 1  # the related rows came with it
        (expected,) = _devices_of_region(device.region_id)
        assert (found.pk, found.serial, found.network_capabilities) == (
            expected.pk,
            expected.serial,
            expected.network_capabilities,
        )
    assert compiled(987_654_321) == []


def test_each_thread_compiles_on_its_own_connection():
    devices = [DeviceFactory.create() for _ in range(4)]
    compiled = CompiledQuery(_devices_of_region, stand_in=987_654_321)
    found: dict[int, int] = {}

    def look_up(device: Device) -> None:
        try:
            found[device.pk] = compiled(device.region_id)[0].pk
        finally:
            connection.close()

    threads = [threading.Thread(target=look_up, args=(device,)) for device in devices]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert found == {device.pk: device.pk for device in devices}


def test_a_stand_in_that_is_not_exactly_one_parameter_is_refused():
    with pytest.raises(RuntimeError, match="appears 2 times"):
        CompiledQuery(lambda key: Device.objects.filter(pk=key, region_id=key), stand_in=987_654_321)(1)
