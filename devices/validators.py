"""Content rules for inventory values, written once and shared by services, serializers, the importer and other apps.

Every validator takes one value and returns None or raises django.core.exceptions.ValidationError (DRF turns that
into a field error when the validator is attached to a serializer field).
"""

from __future__ import annotations

import re
import zoneinfo
from functools import cache
from typing import Any

from django.core.exceptions import ValidationError

from devices.choices import NetworkCapability, ValidationCheck

# Semantic Versioning 2.0.0 (semver.org), ASCII digits only (\d would also match other scripts' digits).
SEMVER_RE = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-((?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?\Z"
)
SEMVER_MAX_LENGTH = 64
SERIAL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{2,63}\Z")
# Path segments of the device API that a serial must not shadow (/api/v1/devices/<serial>/).
RESERVED_SERIALS = frozenset({"import", "drift"})
# ISO 3779: 17 characters, letters I, O and Q never used.
VIN_RE = re.compile(r"^[A-HJ-NPR-Z0-9]{17}\Z")
# sha256 of the device certificate's DER encoding, lowercase hex.
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}\Z")
TIME_ZONE_RE = re.compile(r"^[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*\Z")
SLOT_NAME_RE = re.compile(r"^[a-z0-9_]{1,16}\Z")
PARTITION_SCHEMES = ("ab", "single")
MAX_SLOT_SIZE_BYTES = 2**62
# Anti-rollback counters and boot counts: a PositiveIntegerField is a 32-bit signed column on PostgreSQL.
MAX_RELEASE_COUNTER = 2**31 - 1
MAX_TAGS = 50
# Region budgets are counts per window or streams at once; 0 means "no limit", None "the global default".
MAX_BUDGET = 10_000_000
# What a device reports at check-in: its active slot and a small health summary.
SLOT_NAMES = ("a", "b")
MAX_HEALTH_ENTRIES = 16
MAX_HEALTH_NAME = 32
# The reason a person gives for a decision (status moves, changes, credential revocations).
MAX_REASON_LENGTH = 2000


def validate_semver(value: object) -> None:
    """Raise ValidationError unless value is a semantic version such as 1.4.0 or 2.0.0-rc.1+build.7."""
    if not isinstance(value, str) or len(value) > SEMVER_MAX_LENGTH or not SEMVER_RE.match(value):
        raise ValidationError("Enter a semantic version such as 1.4.2 or 2.0.0-rc.1.", code="invalid_semver")


def validate_serial(value: object) -> None:
    """Raise ValidationError unless value is a device serial: 3-64 of A-Z a-z 0-9 . _ - starting alphanumeric."""
    if not isinstance(value, str) or not SERIAL_RE.match(value):
        raise ValidationError(
            "A serial is 3-64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit.",
            code="invalid_serial",
        )
    if value.lower() in RESERVED_SERIALS:
        raise ValidationError(f"'{value}' is reserved and cannot be a serial.", code="reserved_serial")


def validate_vin(value: object) -> None:
    """Raise ValidationError unless value is a 17-character VIN (upper case, no I, O or Q)."""
    if not isinstance(value, str) or not VIN_RE.match(value):
        raise ValidationError(
            "A VIN is 17 characters of A-Z (except I, O, Q) and 0-9, in upper case.", code="invalid_vin"
        )


def validate_certificate_fingerprint(value: object) -> None:
    """Raise ValidationError unless value is a sha256 fingerprint: 64 lowercase hex digits."""
    if not isinstance(value, str) or not FINGERPRINT_RE.match(value):
        raise ValidationError(
            "A certificate fingerprint is the sha256 of the certificate as 64 lowercase hex digits.",
            code="invalid_fingerprint",
        )


@cache
def _known_time_zones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def validate_time_zone(value: object) -> None:
    """Raise ValidationError unless value names an IANA time zone known to this system (e.g. Europe/Berlin)."""
    message = "Enter an IANA time zone such as Europe/Berlin."
    if not isinstance(value, str) or len(value) > 64 or not TIME_ZONE_RE.match(value):
        raise ValidationError(message, code="invalid_time_zone")
    if value in _known_time_zones():
        return
    # available_timezones() can be incomplete on some systems; ask zoneinfo itself before refusing.
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ValidationError(message, code="invalid_time_zone") from None


def _string_subset(value: Any, allowed: list[str], what: str) -> None:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValidationError(f"Must be a list of {what}.", code="invalid")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        raise ValidationError(
            f"Unknown {what}: {', '.join(unknown[:10])}. Allowed: {', '.join(allowed)}.", code="invalid_choice"
        )
    if len(set(value)) != len(value):
        raise ValidationError(f"{what.capitalize()} are listed more than once.", code="duplicate")


def validate_validation_checks(value: Any) -> None:
    """Raise ValidationError unless value is a list of distinct ValidationCheck values."""
    _string_subset(value, list(ValidationCheck.values), "validation checks")


def validate_network_capabilities(value: Any) -> None:
    """Raise ValidationError unless value is a list of distinct NetworkCapability values."""
    _string_subset(value, list(NetworkCapability.values), "network capabilities")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_SLOT_SIZE_BYTES


def validate_partition_layout(value: Any) -> None:
    """Raise ValidationError unless value is {"scheme": "ab", "slots": [two names], "slot_size_bytes": n>0}
    or {"scheme": "single"} (optionally with "slots": [one name] and a positive "slot_size_bytes")."""
    if not isinstance(value, dict):
        raise ValidationError("The partition layout must be an object.", code="invalid")
    scheme = value.get("scheme")
    if scheme not in PARTITION_SCHEMES:
        raise ValidationError('"scheme" must be "ab" or "single".', code="invalid_scheme")
    unknown = sorted(str(key) for key in set(value) - {"scheme", "slots", "slot_size_bytes"})
    if unknown:
        raise ValidationError(f"Unknown partition layout keys: {', '.join(unknown[:10])}.", code="invalid")
    slots = value.get("slots")
    size = value.get("slot_size_bytes")
    if scheme == "ab":
        if not isinstance(slots, list) or len(slots) != 2:
            raise ValidationError('An A/B layout names exactly two "slots", e.g. ["a", "b"].', code="invalid_slots")
        if not _positive_int(size):
            raise ValidationError('An A/B layout needs a positive integer "slot_size_bytes".', code="invalid_size")
    else:
        if slots is not None and (not isinstance(slots, list) or len(slots) != 1):
            raise ValidationError('A single-slot layout names at most one slot in "slots".', code="invalid_slots")
        if size is not None and not _positive_int(size):
            raise ValidationError('"slot_size_bytes" must be a positive integer.', code="invalid_size")
    if slots is not None:
        if not all(isinstance(slot, str) and SLOT_NAME_RE.match(slot) for slot in slots):
            raise ValidationError("Slot names are 1-16 of a-z, 0-9 and '_'.", code="invalid_slots")
        if len(set(slots)) != len(slots):
            raise ValidationError("Slot names must differ.", code="invalid_slots")


def validate_reason(value: str) -> None:
    """Raise ValidationError unless value is a storable reason of at most MAX_REASON_LENGTH characters."""
    if len(value) > MAX_REASON_LENGTH:
        raise ValidationError(f"At most {MAX_REASON_LENGTH} characters.", code="max_length")
    validate_text(value)


def validate_text(value: str) -> None:
    """Raise ValidationError when free text cannot be stored: NUL characters or unpaired surrogates."""
    if "\x00" in value:
        raise ValidationError("Null characters are not allowed.", code="null_characters_not_allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("The text is not valid Unicode.", code="invalid_unicode") from None
