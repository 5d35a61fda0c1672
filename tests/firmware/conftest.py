"""Helpers for release tests: hand-built multipart bodies (raw file names), snapshots of what was written."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from approvals.audit.models import DecisionRecord
from devices.firmware.models import FirmwareArtifact, FirmwareRelease
from tests.factories import HardwareModelFactory

RELEASES_URL = "/api/v1/releases/"
BOUNDARY = "ota-test-boundary-5c1f0e"
GOOD_REVISION = "0123456789abcdef0123456789abcdef01234567"


def multipart_body(
    fields: Iterable[tuple[str, str]], files: Iterable[tuple[str, bytes | str, bytes]] = ()
) -> tuple[bytes, str]:
    """A multipart/form-data body built by hand, so file names reach the server exactly as written here.

    (Django's test client would strip directories from file names before sending them.)
    """
    parts: list[bytes] = []
    for name, value in fields:
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value.encode() + b"\r\n"
        )
    for name, file_name, content in files:
        raw_name = file_name if isinstance(file_name, bytes) else file_name.encode()
        parts.append(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="'.encode()
            + raw_name
            + b'"\r\nContent-Type: application/octet-stream\r\n\r\n'
            + content
            + b"\r\n"
        )
    parts.append(f"--{BOUNDARY}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={BOUNDARY}"


def image_bytes(size: int, seed: str = "image") -> bytes:
    """Deterministic, incompressible-looking bytes of the given size."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def files_under(root: Path) -> list[Path]:
    """Every regular file below root (artifacts, temp uploads, staging files), sorted."""
    return sorted(path for path in root.rglob("*") if path.is_file())


@dataclass(frozen=True)
class Written:
    """What a refusal must leave untouched."""

    releases: int
    artifacts: int
    records: int
    files: tuple[Path, ...]


@pytest.fixture
def snapshot(tmp_path) -> Callable[[], Written]:
    """snapshot() -> counts of release rows, artifact rows, decision records and files under tmp_path."""

    def _take() -> Written:
        return Written(
            releases=FirmwareRelease.objects.count(),
            artifacts=FirmwareArtifact.objects.count(),
            records=DecisionRecord.objects.count(),
            files=tuple(files_under(tmp_path)),
        )

    return _take


@pytest.fixture
def hw_model(db):
    return HardwareModelFactory.create(name="tcu-4g-r2")


@pytest.fixture
def hw_model_2(db):
    return HardwareModelFactory.create(name="tcu-5g-r1")


@pytest.fixture
def release_fields(hw_model) -> Callable[..., list[tuple[str, str]]]:
    """release_fields(version="2.0.0", ...) -> form fields for a valid release; None drops a field."""

    def _fields(**overrides: object) -> list[tuple[str, str]]:
        values: dict[str, object] = {
            "version": "2.0.0",
            "release_counter": "10",
            "hardware_models": [hw_model.name],
            "source_revision": GOOD_REVISION,
            "builder": "ci-builder-7",
            "sbom_ref": "https://sbom.example.test/tcu/2.0.0.spdx.json",
            "notes": "Fixes modem reconnect loop.",
        }
        values.update(overrides)
        fields: list[tuple[str, str]] = []
        for name, value in values.items():
            if value is None:
                continue
            for item in value if isinstance(value, list) else [value]:
                fields.append((name, str(item)))
        return fields

    return _fields


@pytest.fixture
def post_release(release_fields) -> Callable[..., object]:
    """post_release(client, content=b"...", file_name="tcu.bin", extra_files=(), **field_overrides) -> response."""

    def _post(
        client: APIClient,
        *,
        content: bytes = b"firmware image v2.0.0\n" * 100,
        file_name: bytes | str = "tcu-2.0.0.bin",
        file_field: str = "file",
        extra_files: Iterable[tuple[str, bytes | str, bytes]] = (),
        **overrides: object,
    ):
        files = [(file_field, file_name, content), *extra_files] if content is not None else list(extra_files)
        body, content_type = multipart_body(release_fields(**overrides), files)
        return client.post(RELEASES_URL, data=body, content_type=content_type)

    return _post
