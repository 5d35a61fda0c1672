"""The content-addressed store: names are allow-listed, paths come from the digest, identical images dedupe."""

from __future__ import annotations

import hashlib

import pytest
from django.core.exceptions import ValidationError
from django.db import transaction

from devices.firmware.models import FirmwareArtifact
from devices.firmware.storage import (
    artifact_discard,
    artifact_open,
    artifact_path,
    artifact_store,
    receive_stream,
    validate_artifact_name,
)
from ota_project.errors import InvalidInput
from tests.firmware.conftest import files_under, image_bytes


@pytest.mark.parametrize(
    "name",
    ["tcu-2.0.0.bin", "TCU_4G.r2.img", "a", "0.bin", "x" * 128, "fw-1.2.3-rc.1"],
)
def test_plain_file_names_are_allowed(name):
    validate_artifact_name(name)


@pytest.mark.parametrize(
    "name",
    [
        "../x.bin",
        "a/b.bin",
        "..",
        ".",
        ".hidden",
        "x\\y",
        "x\x00y.bin",
        "a..b",
        "",
        "x" * 129,
        "-leading-dash.bin",
        "space in.bin",
        "ümlaut.bin",
        "/etc/passwd",
        "C:evil.bin",
        "tcu.bin\n",
    ],
)
def test_path_tricks_and_odd_names_are_refused(name):
    with pytest.raises(ValidationError):
        validate_artifact_name(name)


def test_receiving_a_stream_hashes_it_and_refuses_past_the_limit(tmp_path, settings):
    content = image_bytes(3 * 1024 * 1024 + 17)
    received = receive_stream(iter([content[i : i + 65536] for i in range(0, len(content), 65536)]), max_bytes=10**8)
    assert received.sha256 == hashlib.sha256(content).hexdigest()
    assert received.size_bytes == len(content)
    assert received.temp_path.read_bytes() == content
    received.temp_path.unlink()

    with pytest.raises(InvalidInput) as refused:
        receive_stream(iter([b"a" * 600, b"b" * 600]), max_bytes=1000)
    assert refused.value.code == "artifact_too_large" and refused.value.status_code == 413
    assert files_under(tmp_path) == []


@pytest.mark.django_db
def test_store_path_is_the_digest_and_identical_images_share_one_file(tmp_path, settings):
    content = image_bytes(5000)
    sha = hashlib.sha256(content).hexdigest()
    with transaction.atomic():
        first = artifact_store(received=receive_stream([content], max_bytes=10**6))
        second = artifact_store(received=receive_stream([content], max_bytes=10**6))

    assert first.artifact.pk == second.artifact.pk
    assert first.placed_path == settings.ARTIFACT_ROOT / sha[:2] / sha
    assert second.placed_path is None  # reused, not written again
    assert first.artifact.storage_path == f"{sha[:2]}/{sha}"
    assert FirmwareArtifact.objects.filter(sha256=sha).count() == 1
    with artifact_open(sha) as stored:
        assert stored.read() == content
    # The second temp file was left for its owner to delete; the store holds exactly one copy.
    assert [p for p in files_under(settings.ARTIFACT_ROOT)] == [artifact_path(sha)]


@pytest.mark.django_db
def test_discarding_takes_away_only_a_file_this_call_placed(settings):
    with transaction.atomic():
        stored = artifact_store(received=receive_stream([b"image"], max_bytes=100))
    assert stored.placed_path is not None and stored.placed_path.exists()
    artifact_discard(stored)
    assert not stored.placed_path.exists()


@pytest.mark.django_db
def test_a_stored_file_of_the_wrong_size_is_replaced(settings):
    content = b"the real image"
    sha = hashlib.sha256(content).hexdigest()
    path = artifact_path(sha)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"truncated")
    with transaction.atomic():
        stored = artifact_store(received=receive_stream([content], max_bytes=100))
    assert stored.placed_path == path
    assert path.read_bytes() == content


def test_opening_a_malformed_digest_is_refused():
    with pytest.raises(ValueError):
        artifact_open("../../etc/passwd")
