"""`manage.py create_release`: the CI path to a release, under the same rules as the API."""

from __future__ import annotations

import hashlib

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from approvals.audit.models import DecisionRecord
from devices.firmware.management.commands.create_release import Command
from devices.firmware.models import FirmwareRelease
from devices.firmware.storage import artifact_path
from tests.firmware.conftest import GOOD_REVISION, files_under, image_bytes

pytestmark = pytest.mark.django_db


def _args(image, **overrides: str) -> list[str]:
    options = {
        "--version": "3.1.0",
        "--counter": "30",
        "--hardware-model": "tcu-4g-r2",
        "--source-revision": GOOD_REVISION,
        "--builder": "gitlab-runner-12",
        "--sbom-ref": "sha256:" + "b" * 64,
        "--actor": "rita-requester",
    }
    options.update(overrides)
    args = [str(image)]
    for name, value in options.items():
        args += [name, value]
    return args


@pytest.fixture
def image(tmp_path):
    path = tmp_path / "input" / "tcu-3.1.0.bin"
    path.parent.mkdir()
    path.write_bytes(image_bytes(2_500_000))
    return path


def test_command_creates_a_release_from_a_file_on_disk(requester, hw_model, image, capsys):
    call_command("create_release", *_args(image))

    release = FirmwareRelease.objects.get(version="3.1.0")
    sha = hashlib.sha256(image.read_bytes()).hexdigest()
    assert release.artifact.sha256 == sha and release.artifact.size_bytes == image.stat().st_size
    assert release.artifact_name == "tcu-3.1.0.bin" and release.release_counter == 30
    assert release.created_by == requester and release.builder == "gitlab-runner-12"
    assert artifact_path(sha).read_bytes() == image.read_bytes()
    assert image.exists()  # the input is copied, never moved
    assert sha in capsys.readouterr().out
    assert DecisionRecord.objects.filter(action="releases.create", object_id=str(release.pk)).exists()


def test_command_exits_1_on_refusal_and_writes_nothing(requester, hw_model, image, snapshot, monkeypatch):
    call_command("create_release", *_args(image))
    before = snapshot()
    # run_from_argv closes every connection when it ends, which would end the test's transaction too.
    monkeypatch.setattr("django.core.management.base.connections.close_all", lambda: None)
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(
            ["manage.py", "create_release", *_args(image, **{"--version": "3.2.0", "--counter": "29"})]
        )
    assert exited.value.code == 1
    assert snapshot() == before


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"--version": "3.1"}, "version"),
        ({"--hardware-model": "no-such-model"}, "Unknown hardware model"),
        ({"--counter": "0"}, "release_counter"),
        ({"--actor": "nobody"}, "No active user"),
        ({"--source-revision": "HEAD"}, "source_revision"),
    ],
)
def test_command_explains_refusals(requester, hw_model, image, snapshot, overrides, message):
    before = snapshot()
    with pytest.raises(CommandError, match=message):
        call_command("create_release", *_args(image, **overrides))
    assert snapshot() == before


def test_command_refuses_actors_without_the_requester_role(operator, hw_model, image, snapshot):
    before = snapshot()
    with pytest.raises(CommandError, match="not_permitted"):
        call_command("create_release", *_args(image, **{"--actor": operator.username}))
    assert snapshot() == before


def test_command_refuses_oversized_images(requester, hw_model, image, snapshot, settings):
    settings.ARTIFACT_MAX_BYTES = 1_000_000
    before = snapshot()
    with pytest.raises(CommandError, match="artifact_too_large"):
        call_command("create_release", *_args(image))
    assert snapshot() == before
    assert [p for p in files_under(image.parent.parent) if p != image] == []
