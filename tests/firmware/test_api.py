"""The release API contract: upload, dedupe, size limit, name allow-list, validation, roles, download."""

from __future__ import annotations

import hashlib

import pytest
from django.middleware.csrf import _get_new_csrf_string
from rest_framework.test import APIClient

from approvals.audit.models import DecisionRecord
from devices.firmware.models import FirmwareArtifact, FirmwareRelease
from devices.firmware.storage import artifact_path
from ota_project.roles import Role
from tests.factories import FirmwareReleaseFactory
from tests.firmware.conftest import RELEASES_URL, files_under, image_bytes, multipart_body

pytestmark = pytest.mark.django_db


def _error(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    return body["error"]


def test_upload_computes_sha256_and_size_and_stores_by_digest(client_for, requester, post_release, tmp_path):
    content = image_bytes(300_000)  # several 64 KiB chunks
    response = post_release(client_for(requester), content=content)

    assert response.status_code == 201, response.json()
    body = response.json()
    sha = hashlib.sha256(content).hexdigest()
    assert body["artifact"] == {"sha256": sha, "size_bytes": len(content)}
    assert body["hardware_models"] == ["tcu-4g-r2"]
    assert body["created_by"] == requester.username
    assert body["version"] == "2.0.0" and body["release_counter"] == 10
    assert body["artifact_name"] == "tcu-2.0.0.bin"
    assert response["Location"] == f"{RELEASES_URL}{body['id']}/"
    # Only the stored image remains: no temp upload, no staging file.
    assert files_under(tmp_path) == [artifact_path(sha)]
    assert artifact_path(sha).read_bytes() == content
    assert DecisionRecord.objects.filter(action="releases.create", object_id=str(body["id"])).count() == 1


def test_identical_uploads_dedupe_to_one_artifact_and_one_file(client_for, requester, post_release, tmp_path):
    client = client_for(requester)
    content = image_bytes(10_000)
    first = post_release(client, content=content, version="2.0.0", release_counter="10")
    second = post_release(client, content=content, version="2.0.1", release_counter="11", file_name="other.bin")

    assert first.status_code == second.status_code == 201
    assert first.json()["artifact"] == second.json()["artifact"]
    assert FirmwareArtifact.objects.count() == 1 and FirmwareRelease.objects.count() == 2
    assert files_under(tmp_path) == [artifact_path(hashlib.sha256(content).hexdigest())]


def test_hardware_models_may_be_repeated_fields_or_comma_separated(client_for, requester, post_release, hw_model_2):
    client = client_for(requester)
    repeated = post_release(client, content=b"a", version="2.0.0", hardware_models=["tcu-4g-r2", "tcu-5g-r1"])
    commas = post_release(
        client, content=b"b", version="2.0.1", release_counter="11", hardware_models="tcu-4g-r2, tcu-5g-r1"
    )
    assert repeated.status_code == commas.status_code == 201
    assert repeated.json()["hardware_models"] == commas.json()["hardware_models"] == ["tcu-4g-r2", "tcu-5g-r1"]


def test_oversized_upload_is_refused_and_leaves_nothing(client_for, requester, post_release, snapshot, settings):
    settings.ARTIFACT_MAX_BYTES = 100_000
    before = snapshot()
    response = post_release(client_for(requester), content=image_bytes(100_001))

    assert response.status_code == 413
    error = _error(response)
    assert error["code"] == "artifact_too_large" and "file" in error["fields"]
    assert snapshot() == before


def test_upload_at_exactly_the_limit_is_accepted(client_for, requester, post_release, settings):
    settings.ARTIFACT_MAX_BYTES = 100_000
    response = post_release(client_for(requester), content=image_bytes(100_000))
    assert response.status_code == 201
    assert response.json()["artifact"]["size_bytes"] == 100_000


def test_body_declaring_more_than_the_limit_is_refused_unread(client_for, requester, post_release, snapshot, settings):
    settings.ARTIFACT_MAX_BYTES = 1000
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    before = snapshot()
    response = post_release(client_for(requester), content=image_bytes(200_000))
    assert response.status_code == 413 and _error(response)["code"] == "artifact_too_large"
    assert snapshot() == before


@pytest.mark.parametrize("file_name", ["../x.bin", "a/b.bin", "..", ".hidden", "x\\y", b"x\x00y.bin", "..\\..\\x.bin"])
def test_path_tricks_in_file_names_are_refused_naming_the_field(
    client_for, requester, post_release, snapshot, file_name
):
    before = snapshot()
    response = post_release(client_for(requester), file_name=file_name)
    assert response.status_code == 400
    assert "file" in _error(response)["fields"]
    assert snapshot() == before


def test_path_tricks_are_refused_for_session_users_whose_csrf_check_parses_the_body(requester, post_release, snapshot):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(requester)
    token = _get_new_csrf_string()
    client.cookies["csrftoken"] = token
    client.credentials(HTTP_X_CSRFTOKEN=token)
    before = snapshot()

    refused = post_release(client, file_name="../x.bin")
    assert refused.status_code == 400 and "file" in _error(refused)["fields"]
    assert snapshot() == before
    created = post_release(client, content=b"session upload")
    assert created.status_code == 201
    assert created.json()["artifact"]["sha256"] == hashlib.sha256(b"session upload").hexdigest()


def test_session_upload_refused_by_role_after_its_csrf_check_read_the_body_leaves_no_temp_file(
    make_user, post_release, snapshot
):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(make_user(Role.OPERATOR))
    token = _get_new_csrf_string()
    client.cookies["csrftoken"] = token
    client.credentials(HTTP_X_CSRFTOKEN=token)
    before = snapshot()
    response = post_release(client, content=image_bytes(200_000))
    assert response.status_code == 403
    assert snapshot() == before


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"version": "2.0"}, "version"),
        ({"version": "latest"}, "version"),
        ({"version": None}, "version"),
        ({"release_counter": "ten"}, "release_counter"),
        ({"release_counter": "1.5"}, "release_counter"),
        ({"release_counter": "0"}, "release_counter"),
        ({"release_counter": "99999999999999999999"}, "release_counter"),
        ({"hardware_models": ["no-such-model"]}, "hardware_models"),
        ({"hardware_models": ["bad name!"]}, "hardware_models"),
        ({"hardware_models": None}, "hardware_models"),
        ({"source_revision": "not-a-sha"}, "source_revision"),
        ({"builder": ""}, "builder"),
        ({"sbom_ref": "javascript:alert(1)"}, "sbom_ref"),
        ({"version": "2.0.0\x00"}, "version"),
        ({"unexpected": "x"}, "unexpected"),
    ],
)
def test_bad_fields_are_400_naming_the_field_and_write_nothing(
    client_for, requester, post_release, snapshot, overrides, field
):
    before = snapshot()
    response = post_release(client_for(requester), **overrides)
    assert response.status_code == 400, response.json()
    assert field in _error(response)["fields"]
    assert snapshot() == before


def test_missing_empty_or_extra_files_are_400(client_for, requester, post_release, snapshot):
    client = client_for(requester)
    before = snapshot()
    assert "file" in _error(post_release(client, content=None))["fields"]
    assert "file" in _error(post_release(client, content=b""))["fields"]
    extra = post_release(client, extra_files=[("other", "x.bin", b"x")])
    assert extra.status_code == 400 and "other" in _error(extra)["fields"]
    two = post_release(client, extra_files=[("file", "second.bin", b"second image")])
    assert two.status_code == 400 and "file" in _error(two)["fields"]
    assert snapshot() == before


def test_json_body_is_415(client_for, requester):
    response = client_for(requester).post(RELEASES_URL, {"version": "2.0.0"}, format="json")
    assert response.status_code == 415
    _error(response)


def test_counter_below_an_existing_release_for_the_model_is_400_and_writes_nothing(
    client_for, requester, post_release, snapshot
):
    client = client_for(requester)
    assert post_release(client, content=b"one", version="2.0.0", release_counter="10").status_code == 201
    before = snapshot()
    for counter in ["9", "1"]:
        response = post_release(client, content=b"two", version="2.1.0", release_counter=counter)
        assert response.status_code == 400
        error = _error(response)
        assert error["code"] == "counter_not_increasing" and "release_counter" in error["fields"]
    assert snapshot() == before


def test_same_counter_is_a_release_within_the_security_epoch(client_for, requester, post_release):
    """The counter rises only with a security fix: an ordinary release, or the old image re-released as a
    rollback target, keeps the model's current counter."""
    client = client_for(requester)
    assert post_release(client, content=b"one", version="2.0.0", release_counter="10").status_code == 201
    again = post_release(client, content=b"old image", version="1.9.1", release_counter="10")
    assert again.status_code == 201


def test_same_counter_on_a_different_hardware_model_is_201(client_for, requester, post_release, hw_model_2):
    client = client_for(requester)
    assert post_release(client, content=b"one", version="2.0.0", release_counter="10").status_code == 201
    other = post_release(client, content=b"two", version="2.0.1", release_counter="10", hardware_models=["tcu-5g-r1"])
    assert other.status_code == 201


def test_duplicate_version_is_400(client_for, requester, post_release, snapshot):
    client = client_for(requester)
    assert post_release(client, content=b"one").status_code == 201
    before = snapshot()
    response = post_release(client, content=b"two", release_counter="11")
    assert response.status_code == 400 and _error(response)["code"] == "version_exists"
    assert snapshot() == before


# --- role matrix -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (None, 401),
        ("no-role", 403),
        (Role.OPERATOR, 403),
        (Role.AUDITOR, 403),
        (Role.CAB_MEMBER, 403),
        (Role.REQUESTER, 201),
    ],
)
def test_create_role_matrix(make_user, client_for, post_release, snapshot, role, expected):
    user = None if role is None else make_user() if role == "no-role" else make_user(role)
    before = snapshot()
    response = post_release(client_for(user))
    assert response.status_code == expected
    if expected != 201:
        _error(response)
        assert snapshot() == before


@pytest.mark.parametrize(
    ("role", "expected"),
    [(None, 401), ("no-role", 403), (Role.OPERATOR, 200), (Role.AUDITOR, 200), (Role.REQUESTER, 200)],
)
@pytest.mark.parametrize("endpoint", ["list", "detail", "artifact"])
def test_read_role_matrix(make_user, client_for, requester, post_release, role, expected, endpoint):
    created = post_release(client_for(requester)).json()
    user = None if role is None else make_user() if role == "no-role" else make_user(role)
    url = {
        "list": RELEASES_URL,
        "detail": f"{RELEASES_URL}{created['id']}/",
        "artifact": f"{RELEASES_URL}{created['id']}/artifact/",
    }[endpoint]
    assert client_for(user).get(url).status_code == expected


@pytest.mark.parametrize("suffix", ["", "artifact/"])
def test_unknown_release_is_404(client_for, auditor, suffix):
    for release_id in [999999, 99999999999999999999]:
        response = client_for(auditor).get(f"{RELEASES_URL}{release_id}/{suffix}")
        assert response.status_code == 404
        _error(response)


# --- reading ---------------------------------------------------------------------------------------------


def test_artifact_download_returns_the_bytes_with_etag_and_length(client_for, requester, operator, post_release):
    content = image_bytes(150_000)
    created = post_release(client_for(requester), content=content).json()

    response = client_for(operator).get(
        f"{RELEASES_URL}{created['id']}/artifact/", HTTP_ACCEPT="application/octet-stream"
    )
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == content
    assert response["ETag"] == f'"{hashlib.sha256(content).hexdigest()}"'
    assert response["Content-Length"] == str(len(content))
    assert response["Content-Type"] == "application/octet-stream"
    assert 'filename="tcu-2.0.0.bin"' in response["Content-Disposition"]


def test_artifact_missing_from_the_store_is_404_not_500(client_for, auditor):
    release = FirmwareReleaseFactory.create()  # a row whose image was never stored
    response = client_for(auditor).get(f"{RELEASES_URL}{release.pk}/artifact/")
    assert response.status_code == 404 and _error(response)["code"] == "artifact_missing"


def test_detail_shows_the_release(client_for, requester, auditor, post_release):
    created = post_release(client_for(requester)).json()
    response = client_for(auditor).get(f"{RELEASES_URL}{created['id']}/")
    assert response.status_code == 200 and response.json() == created


def test_list_filters_by_hardware_model_version_and_counter_range(
    client_for, requester, auditor, post_release, hw_model_2
):
    client = client_for(requester)
    post_release(client, content=b"a", version="1.0.0", release_counter="5")
    post_release(client, content=b"b", version="1.1.0", release_counter="8")
    post_release(client, content=b"c", version="1.2.0", release_counter="3", hardware_models=["tcu-5g-r1"])
    post_release(client, content=b"d", version="1.3.0", release_counter="9", hardware_models=["tcu-4g-r2", "tcu-5g-r1"])
    reader = client_for(auditor)

    def versions(query: str) -> list[str]:
        response = reader.get(f"{RELEASES_URL}?{query}")
        assert response.status_code == 200
        return sorted(item["version"] for item in response.json()["results"])

    assert versions("") == ["1.0.0", "1.1.0", "1.2.0", "1.3.0"]
    assert versions("hardware_model=tcu-4g-r2") == ["1.0.0", "1.1.0", "1.3.0"]
    assert versions("hardware_model=tcu-5g-r1") == ["1.2.0", "1.3.0"]
    assert versions("version=1.1.0") == ["1.1.0"]
    assert versions("counter_min=5&counter_max=8") == ["1.0.0", "1.1.0"]
    assert versions("hardware_model=tcu-5g-r1&counter_min=4") == ["1.3.0"]


@pytest.mark.parametrize(
    "query", ["counter_min=abc", "counter_max=1.5", "counter_min=99999999999", "hardware_model=a%00b"]
)
def test_list_refuses_bad_filters_with_400(client_for, auditor, query):
    response = client_for(auditor).get(f"{RELEASES_URL}?{query}")
    assert response.status_code == 400
    _error(response)


def test_schema_documents_the_multipart_upload(client_for, auditor):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    post = schema["paths"]["/api/v1/releases/"]["post"]
    assert list(post["requestBody"]["content"]) == ["multipart/form-data"]
    component = post["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert schema["components"]["schemas"][component]["properties"]["file"] == {
        "type": "string",
        "format": "binary",
        "description": schema["components"]["schemas"][component]["properties"]["file"]["description"],
    }
    artifact = schema["paths"]["/api/v1/releases/{id}/artifact/"]["get"]["responses"]["200"]["content"]
    assert artifact == {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}


def test_multipart_body_helper_keeps_raw_names():
    body, _ = multipart_body([], [("file", "../x.bin", b"x")])
    assert b'filename="../x.bin"' in body
