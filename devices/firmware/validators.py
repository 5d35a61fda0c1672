"""Format rules for release metadata: git revisions, builders and SBOM references (semver comes from devices).

Each validator raises django.core.exceptions.ValidationError, so DRF serializer fields, forms and the
services can share them. Patterns use explicit ASCII classes and `\\Z`: `\\d` would accept other scripts'
digits and `$` would accept a trailing newline.
"""

from __future__ import annotations

import re

from django.core.exceptions import ValidationError

from devices.validators import SEMVER_MAX_LENGTH, SEMVER_RE

# Semantic versions follow the inventory's rule (devices/validators.py), so installed and released versions agree.
# The OpenAPI schema needs an ECMA regex: the same pattern with `$` in place of `\Z`.
SEMVER_PATTERN = SEMVER_RE.pattern.removesuffix(r"\Z") + "$"
VERSION_MAX_LENGTH = SEMVER_MAX_LENGTH

SOURCE_REVISION_PATTERN = r"^[0-9a-fA-F]{7,40}$"  # the API accepts either case; stored lower-case
SOURCE_REVISION_RE = re.compile(r"\A[0-9a-f]{7,40}\Z")
SBOM_DIGEST_RE = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
# A URI with a scheme we are willing to show as a link (never javascript: or data:).
SBOM_URI_RE = re.compile(r"\A(?P<scheme>[a-z][a-z0-9+.-]*):[!-~]+\Z")
SBOM_URI_SCHEMES = frozenset({"https", "http", "urn", "oci", "s3", "gs"})
SBOM_REF_MAX_LENGTH = 500
BUILDER_MAX_LENGTH = 120
_CONTROL_CHARS_RE = re.compile(r"[\x00-\x1f\x7f]")


def normalize_source_revision(value: str) -> str:
    """Git revisions are stored lower-case so that equal revisions compare equal."""
    return value.strip().lower()


def validate_source_revision(value: str) -> None:
    """A git commit id: 7 to 40 hexadecimal characters (lower-case after normalization)."""
    if not isinstance(value, str) or not SOURCE_REVISION_RE.match(value):
        raise ValidationError(
            "Enter the git commit the image was built from: 7 to 40 hexadecimal characters.",
            code="invalid_source_revision",
        )


def validate_builder(value: str) -> None:
    """Who or what built the image: non-empty, one line, at most 120 characters."""
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("Name the builder (CI job or host) that produced the image.", code="required")
    if len(value) > BUILDER_MAX_LENGTH or _CONTROL_CHARS_RE.search(value):
        raise ValidationError(
            f"The builder must be one line of at most {BUILDER_MAX_LENGTH} characters.", code="invalid_builder"
        )


def validate_sbom_ref(value: str) -> None:
    """Empty, `sha256:<64 hex>`, or a URI with an allowed scheme (https, http, urn, oci, s3, gs)."""
    if value == "":
        return
    if not isinstance(value, str) or len(value) > SBOM_REF_MAX_LENGTH:
        raise ValidationError(f"At most {SBOM_REF_MAX_LENGTH} characters.", code="invalid_sbom_ref")
    if value.startswith("sha256:"):
        if SBOM_DIGEST_RE.match(value):
            return
        raise ValidationError(
            "A digest reference must be sha256: followed by 64 lower-case hex digits.", "invalid_sbom_ref"
        )
    match = SBOM_URI_RE.match(value)
    if not match or match.group("scheme") not in SBOM_URI_SCHEMES:
        raise ValidationError(
            "Enter a URI (https, http, urn, oci, s3 or gs) or sha256:<hex> for the SBOM.", code="invalid_sbom_ref"
        )
