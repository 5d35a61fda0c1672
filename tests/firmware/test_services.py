"""Release creation rules at the service: who, what version, which hardware, which counter, what provenance."""

from __future__ import annotations

import hashlib
import threading

import pytest
from django.contrib.auth.models import Group
from django.db import connection

from approvals.audit.models import DecisionRecord
from approvals.audit.records import chain_verify
from devices.firmware.models import FirmwareArtifact, FirmwareRelease
from devices.firmware.selectors import release_latest_counter
from devices.firmware.services import release_create
from devices.firmware.storage import artifact_path, receive_stream, release_temp
from devices.models import HardwareModel
from devices.validators import validate_semver
from ota_project.errors import InvalidInput, NotPermitted
from ota_project.roles import Role
from tests.factories import FirmwareReleaseFactory, HardwareModelFactory, UserFactory
from tests.firmware.conftest import GOOD_REVISION

pytestmark = pytest.mark.django_db


def _create(actor, content: bytes = b"image-bytes", **overrides):
    received = receive_stream([content], max_bytes=10**6)
    values = {
        "actor": actor,
        "version": "2.0.0",
        "release_counter": 10,
        "hardware_models": ["tcu-4g-r2"],
        "received": received,
        "artifact_name": "tcu-2.0.0.bin",
        "source_revision": GOOD_REVISION,
        "builder": "ci-builder-7",
        "sbom_ref": "",
        "notes": "",
    }
    values.update(overrides)
    try:
        return release_create(**values)
    finally:
        release_temp(received)


def test_release_engineer_creates_a_release_with_its_artifact_and_a_decision_record(requester, hw_model, hw_model_2):
    content = b"firmware 2.0.0"
    release = _create(requester, content, hardware_models=["tcu-4g-r2", "tcu-5g-r1"], sbom_ref="sha256:" + "a" * 64)

    sha = hashlib.sha256(content).hexdigest()
    assert release.artifact.sha256 == sha and release.artifact.size_bytes == len(content)
    assert artifact_path(sha).read_bytes() == content
    assert sorted(release.hardware_models.values_list("name", flat=True)) == ["tcu-4g-r2", "tcu-5g-r1"]
    assert release.created_by == requester
    record = DecisionRecord.objects.get(action="releases.create")
    assert record.object_type == "firmware_release" and record.object_id == str(release.pk)
    assert record.actor_name == requester.username
    assert record.after == {
        "version": "2.0.0",
        "counter": 10,
        "sha256": sha,
        "size": len(content),
        "hardware_models": ["tcu-4g-r2", "tcu-5g-r1"],
    }
    assert chain_verify().ok


def test_source_revision_is_stored_lower_case(requester, hw_model):
    release = _create(requester, source_revision="ABCDEF1")
    assert release.source_revision == "abcdef1"


@pytest.mark.parametrize("role", [Role.OPERATOR, Role.AUDITOR, Role.CAB_MEMBER, Role.SECURITY_OFFICER])
def test_only_release_engineers_create_releases(make_user, hw_model, snapshot, role):
    before = snapshot()
    with pytest.raises(NotPermitted):
        _create(make_user(role))
    assert snapshot() == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"version": "2.0"}, "version"),
        ({"version": "v2.0.0"}, "version"),
        ({"version": "02.0.0"}, "version"),
        ({"version": "2.0.0\n"}, "version"),
        ({"version": "2.0.0-"}, "version"),
        ({"release_counter": 0}, "release_counter"),
        ({"release_counter": 2**31}, "release_counter"),
        ({"release_counter": True}, "release_counter"),
        ({"hardware_models": []}, "hardware_models"),
        ({"hardware_models": ["bad name"]}, "hardware_models"),
        ({"hardware_models": ["no-such-model"]}, "hardware_models"),
        ({"artifact_name": "../tcu.bin"}, "artifact_name"),
        ({"source_revision": "xyz1234"}, "source_revision"),
        ({"source_revision": "abc12"}, "source_revision"),
        ({"source_revision": "a" * 41}, "source_revision"),
        ({"builder": "   "}, "builder"),
        ({"builder": "ci\nbuilder"}, "builder"),
        ({"sbom_ref": "javascript:alert(1)"}, "sbom_ref"),
        ({"sbom_ref": "sha256:1234"}, "sbom_ref"),
        ({"sbom_ref": "not a uri"}, "sbom_ref"),
        ({"notes": "x\x00y"}, "notes"),
    ],
)
def test_bad_input_is_refused_naming_the_field_and_writes_nothing(requester, hw_model, snapshot, overrides, field):
    before = snapshot()
    with pytest.raises(InvalidInput) as refused:
        _create(requester, **overrides)
    assert field in refused.value.fields
    assert snapshot() == before


@pytest.mark.parametrize("version", ["0.0.0", "2.4.1", "1.0.0-rc.1", "1.0.0-alpha.beta+exp.sha.5114f85", "10.20.30"])
def test_semantic_versions_are_accepted(version):
    validate_semver(version)


@pytest.mark.parametrize("sbom_ref", ["", "https://sbom.example.test/a.spdx.json", "urn:uuid:1234", "oci://reg/x@y"])
def test_sbom_reference_may_be_empty_a_uri_or_a_digest(requester, hw_model, sbom_ref):
    assert _create(requester, sbom_ref=sbom_ref).sbom_ref == sbom_ref


def test_version_is_unique(requester, hw_model, snapshot):
    _create(requester, b"one")
    before = snapshot()
    with pytest.raises(InvalidInput) as refused:
        _create(requester, b"two", release_counter=11)
    assert refused.value.code == "version_exists" and "version" in refused.value.fields
    assert snapshot() == before


@pytest.mark.parametrize("counter", [5, 9])
def test_counter_lower_than_an_existing_release_for_the_model_is_refused(requester, hw_model, snapshot, counter):
    _create(requester, b"first", version="1.0.0", release_counter=10)
    before = snapshot()
    with pytest.raises(InvalidInput) as refused:
        _create(requester, b"second", version="1.1.0", release_counter=counter)
    assert refused.value.code == "counter_not_increasing"
    assert "tcu-4g-r2" in refused.value.fields["release_counter"][0]
    assert snapshot() == before


def test_counter_must_reach_the_highest_of_every_listed_model(requester, hw_model, hw_model_2, snapshot):
    _create(requester, b"a", version="1.0.0", release_counter=5, hardware_models=["tcu-4g-r2"])
    _create(requester, b"b", version="1.1.0", release_counter=20, hardware_models=["tcu-5g-r1"])
    before = snapshot()
    with pytest.raises(InvalidInput) as refused:
        _create(requester, b"c", version="1.2.0", release_counter=15, hardware_models=["tcu-4g-r2", "tcu-5g-r1"])
    assert refused.value.fields == {
        "release_counter": ["Must be at least 20, the highest release counter for tcu-5g-r1."]
    }
    assert snapshot() == before


def test_same_counter_on_a_different_hardware_model_is_fine(requester, hw_model, hw_model_2):
    _create(requester, b"a", version="1.0.0", release_counter=10, hardware_models=["tcu-4g-r2"])
    release = _create(requester, b"b", version="1.0.1", release_counter=10, hardware_models=["tcu-5g-r1"])
    assert release.release_counter == 10
    assert release_latest_counter("tcu-4g-r2") == 10
    assert release_latest_counter(HardwareModel.objects.get(name="tcu-5g-r1")) == 10
    assert release_latest_counter(HardwareModelFactory.create(name="tcu-new")) is None


def test_counter_counts_releases_created_outside_the_service_too(requester, hw_model):
    FirmwareReleaseFactory.create(release_counter=50, hardware_models=[hw_model])
    with pytest.raises(InvalidInput):
        _create(requester, release_counter=49)


def test_identical_images_share_one_artifact(requester, hw_model, settings):
    first = _create(requester, b"same image", version="1.0.0", release_counter=1)
    second = _create(requester, b"same image", version="1.0.1", release_counter=2)
    assert first.artifact_id == second.artifact_id
    assert FirmwareArtifact.objects.count() == 1
    assert len([p for p in settings.ARTIFACT_ROOT.rglob("*") if p.is_file()]) == 1


def test_a_refusal_after_storing_leaves_no_file(requester, hw_model, snapshot, monkeypatch):
    def broken_record(**kwargs):
        raise RuntimeError("record store down")

    monkeypatch.setattr("devices.firmware.services.record_decision", broken_record)
    before = snapshot()
    with pytest.raises(RuntimeError):
        _create(requester, b"new image")
    assert snapshot() == before


def test_a_refused_release_keeps_an_image_that_an_earlier_release_stored(requester, hw_model, settings):
    first = _create(requester, b"shared", version="1.0.0", release_counter=5)
    with pytest.raises(InvalidInput):
        _create(requester, b"shared", version="1.0.1", release_counter=4)
    assert artifact_path(first.artifact.sha256).read_bytes() == b"shared"


@pytest.mark.django_db(transaction=True)
def test_concurrent_creates_never_let_a_models_counter_go_down(tmp_path):
    """Two releases for one model race, counters 8 and 7: creation order must never lower the counter, so either
    7 was created first and both exist, or 8 was and 7 is refused; without the model lock both pass either way."""
    # Threads need committed rows, hence a transactional test; an earlier one may have flushed the role groups.
    Group.objects.get_or_create(name=Role.REQUESTER)
    HardwareModelFactory.create(name="tcu-4g-r2")
    actor = UserFactory.create(username="rita-concurrent", roles=[Role.REQUESTER])
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def attempt(version: str, content: bytes, counter: int) -> None:
        try:
            barrier.wait(timeout=10)
            _create(actor, content, version=version, release_counter=counter)
            outcomes.append("created")
        except InvalidInput as exc:
            outcomes.append(exc.code)
        finally:
            connection.close()

    threads = [
        threading.Thread(target=attempt, args=(f"3.0.{i}", f"image {i}".encode(), counter))
        for i, counter in enumerate((8, 7))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    counters_in_creation_order = list(FirmwareRelease.objects.order_by("pk").values_list("release_counter", flat=True))
    assert counters_in_creation_order in ([8], [7, 8])
    assert sorted(outcomes) == (
        ["counter_not_increasing", "created"] if len(counters_in_creation_order) == 1 else ["created", "created"]
    )
    stored = sorted(p for p in (tmp_path / "artifacts").rglob("*") if p.is_file())
    assert stored == sorted(artifact_path(r.artifact.sha256) for r in FirmwareRelease.objects.all())
