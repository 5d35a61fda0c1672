"""The typed target scope: one check (shape and names), stored JSON unchanged, the same devices either way."""

from __future__ import annotations

import pytest

from devices.scope import TargetScope, scope_devices, scope_normalize, scope_parse
from ota_project.errors import InvalidInput
from tests.factories import DeviceFactory


def test_a_checked_scope_is_sorted_deduplicated_and_stored_as_before(hardware_model, region):
    raw = {"regions": [region.code, region.code], "hardware_models": [hardware_model.name], "tags": []}
    scope = scope_parse(raw)
    assert scope == TargetScope(hardware_models=("tcu-4g-r2",), regions=("eu-west",))
    assert scope.to_json() == scope_normalize(raw) == {"hardware_models": ["tcu-4g-r2"], "regions": ["eu-west"]}
    assert TargetScope.stored(scope.to_json()) == scope
    assert TargetScope.stored({}).is_empty and TargetScope.stored({}).to_json() == {}


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"colours": ["red"]}, "colours"),
        ({"regions": "eu-west"}, "regions"),
        ({"hardware_models": ["no-such-model"]}, "hardware_models"),
        ({"devices": ["TCU1"], "regions": ["eu-west"]}, "devices"),
        ({}, "target_scope"),
    ],
)
def test_a_bad_scope_names_its_field(hardware_model, region, raw, field):
    with pytest.raises(InvalidInput) as caught:
        scope_parse(raw)
    assert field in caught.value.fields["target_scope"]


def test_a_scope_built_in_code_is_checked_like_any_other(db):
    with pytest.raises(InvalidInput):
        scope_parse(TargetScope(tags=("no-such-tag",)))


def test_typed_and_stored_scopes_hit_the_same_devices(hardware_model, region):
    hit = DeviceFactory.create_batch(2, hardware_model=hardware_model, region=region, tags=["pilot"])
    DeviceFactory(hardware_model=hardware_model, region=region, tags=[])
    scope = scope_parse({"hardware_models": [hardware_model.name], "tags": ["pilot"]})
    expected = {device.pk for device in hit}
    assert set(scope_devices(scope).values_list("pk", flat=True)) == expected
    assert set(scope_devices(scope.to_json()).values_list("pk", flat=True)) == expected
