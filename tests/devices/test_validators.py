"""The shared value rules other apps import (semantic versions, serials, VINs, fingerprints, layouts)."""

import pytest
from django.core.exceptions import ValidationError

from devices.validators import (
    SEMVER_RE,
    validate_certificate_fingerprint,
    validate_partition_layout,
    validate_semver,
    validate_serial,
    validate_time_zone,
    validate_vin,
)


@pytest.mark.parametrize("version", ["0.0.0", "1.4.2", "10.20.30", "2.0.0-rc.1", "1.0.0-alpha+001", "1.0.0+20130313"])
def test_semantic_versions_are_accepted(version):
    validate_semver(version)
    assert SEMVER_RE.match(version)


@pytest.mark.parametrize(
    "version", ["1", "1.2", "v1.2.3", "01.2.3", "1.2.3-", "1.2.3-01", "1.2.3\n", "１.2.3", "1.2.3" + "-a" * 40, ""]
)
def test_non_semantic_versions_are_refused(version):
    with pytest.raises(ValidationError):
        validate_semver(version)


@pytest.mark.parametrize("serial", ["TCU", "TCU00000001", "a.b_c-d", "9" * 64])
def test_valid_serials_are_accepted(serial):
    validate_serial(serial)


@pytest.mark.parametrize("serial", ["ab", "_abc", "has space", "x" * 65, "drift", "IMPORT", "tcu/1"])
def test_invalid_or_reserved_serials_are_refused(serial):
    with pytest.raises(ValidationError):
        validate_serial(serial)


@pytest.mark.parametrize("vin", ["WDB9634031L123456", "1FTFW1ET5DFC10312"])
def test_valid_vins_are_accepted(vin):
    validate_vin(vin)


@pytest.mark.parametrize("vin", ["WDB9634031L12345", "WDB9634031L12345O", "wdb9634031l123456", "WDB9634031L12345Q"])
def test_invalid_vins_are_refused(vin):
    with pytest.raises(ValidationError):
        validate_vin(vin)


def test_fingerprints_are_64_lowercase_hex_digits():
    validate_certificate_fingerprint("0123456789abcdef" * 4)
    for bad in ["0123456789ABCDEF" * 4, "ab" * 31, "g" * 64]:
        with pytest.raises(ValidationError):
            validate_certificate_fingerprint(bad)


@pytest.mark.parametrize(
    "layout",
    [
        {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 268435456},
        {"scheme": "single"},
        {"scheme": "single", "slots": ["main"], "slot_size_bytes": 1024},
    ],
)
def test_valid_partition_layouts_are_accepted(layout):
    validate_partition_layout(layout)


def test_time_zones_must_be_iana_names():
    validate_time_zone("Europe/Berlin")
    validate_time_zone("UTC")
    for bad in ["Europe/Atlantis", "/etc/localtime", "Europe/../Berlin", "x" * 65]:
        with pytest.raises(ValidationError):
            validate_time_zone(bad)
