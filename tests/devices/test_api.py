"""The inventory API contract: role matrix, 404s, one error format for bad input, import all-or-nothing."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from approvals.audit.models import DecisionRecord
from devices import importer
from devices.choices import DeviceStatus
from devices.models import Device, HardwareModel, Region
from tests.devices.files import rows_to_csv, rows_to_json
from tests.factories import DeviceFactory

pytestmark = pytest.mark.django_db

API = "/api/v1"
SERIAL = "TCU-API-0001"


@pytest.fixture
def device(hardware_model, region):
    return DeviceFactory(serial=SERIAL, hardware_model=hardware_model, region=region, tags=["pilot"])


@pytest.fixture
def user_for(request):
    """user_for("operator") -> that fixture's user; "anonymous" -> None."""

    def _user(name: str):
        return None if name == "anonymous" else request.getfixturevalue(name)

    return _user


def _assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "fields"}
    if code:
        assert body["error"]["code"] == code
    return body["error"]


# --- role matrix -----------------------------------------------------------------------------------------------

READS = [
    f"{API}/hardware-models/",
    f"{API}/hardware-models/tcu-4g-r2/",
    f"{API}/regions/",
    f"{API}/regions/eu-west/",
    f"{API}/devices/",
    f"{API}/devices/{SERIAL}/",
    f"{API}/devices/drift/",
    f"{API}/fleet/versions/",
]


def _import_body(device_row):
    return {"mode": "create", "rows": [device_row(1)]}


WRITES = [
    (
        "post",
        f"{API}/hardware-models/",
        lambda row: {
            "name": "tcu-5g-r1",
            "family": "tcu-5g",
            "revision": "r1",
            "partition_layout": {"scheme": "single"},
        },
        201,
    ),
    ("patch", f"{API}/hardware-models/tcu-4g-r2/", lambda row: {"update_channel": "beta"}, 200),
    (
        "post",
        f"{API}/regions/",
        lambda row: {"code": "us-east", "name": "US East", "time_zone": "America/New_York"},
        201,
    ),
    ("post", f"{API}/devices/", lambda row: row(7), 201),
    ("patch", f"{API}/devices/{SERIAL}/", lambda row: {"installed_version": "1.1.0", "reason": "workshop"}, 200),
    ("post", f"{API}/devices/{SERIAL}/quarantine/", lambda row: {"reason": "modem resets"}, 200),
    ("post", f"{API}/devices/{SERIAL}/revoke/", lambda row: {"reason": "key leaked"}, 200),
    ("post", f"{API}/devices/{SERIAL}/decommission/", lambda row: {"reason": "vehicle scrapped"}, 200),
    ("post", f"{API}/devices/import/", _import_body, 201),
]
WRITE_IDS = [f"{method} {path}" for method, path, _, _ in WRITES]


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize(("who", "expected"), [("anonymous", 401), ("no_role_user", 403)])
def test_reads_need_a_signed_in_user_with_a_role(client_for, user_for, device, path, who, expected):
    _assert_error(client_for(user_for(who)).get(path), expected)


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize("who", ["auditor", "operator", "requester"])
def test_any_role_may_read(client_for, user_for, device, path, who):
    assert client_for(user_for(who)).get(path).status_code == 200


@pytest.mark.parametrize(("method", "path", "body", "success"), WRITES, ids=WRITE_IDS)
@pytest.mark.parametrize(
    ("who", "expected"),
    [("anonymous", 401), ("no_role_user", 403), ("auditor", 403), ("requester", 403), ("security_officer", 403)],
)
def test_only_operators_may_write_and_refusals_change_nothing(
    client_for, user_for, device, device_row, method, path, body, success, who, expected
):
    before = list(Device.objects.values_list("serial", "status", "installed_version"))
    response = getattr(client_for(user_for(who)), method)(path, body(device_row), format="json")
    _assert_error(response, expected)
    assert list(Device.objects.values_list("serial", "status", "installed_version")) == before
    assert HardwareModel.objects.count() == 1 and Region.objects.count() == 1
    assert not DecisionRecord.objects.exists()


@pytest.mark.parametrize(("method", "path", "body", "success"), WRITES, ids=WRITE_IDS)
def test_operators_may_write_and_each_write_is_recorded(
    client_for, operator, device, device_row, method, path, body, success
):
    response = getattr(client_for(operator), method)(path, body(device_row), format="json")
    assert response.status_code == success, response.content
    assert DecisionRecord.objects.filter(actor=operator).count() == 1


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", f"{API}/devices/TCU-NOPE-1/"),
        ("post", f"{API}/devices/TCU-NOPE-1/quarantine/"),
        ("patch", f"{API}/devices/TCU-NOPE-1/"),
        ("get", f"{API}/hardware-models/tcu-nope/"),
        ("patch", f"{API}/hardware-models/tcu-nope/"),
        ("get", f"{API}/regions/nowhere/"),
    ],
)
def test_unknown_objects_are_404(client_for, operator, device, method, path):
    response = getattr(client_for(operator), method)(path, {"reason": "x"}, format="json")
    _assert_error(response, 404, "not_found")


def test_a_device_is_not_found_by_its_numeric_id(client_for, auditor, device):
    assert client_for(auditor).get(f"{API}/devices/{device.pk:03d}/").status_code == 404


# --- devices ---------------------------------------------------------------------------------------------------


def test_create_device_answers_with_the_stored_device(client_for, operator, device_row):
    row = device_row(3, vin="wdb00000000000003")
    response = client_for(operator).post(f"{API}/devices/", row, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["serial"] == "TCU-IMPORT-00003" and body["vin"] == "WDB00000000000003"
    assert body["hardware_model"] == "tcu-4g-r2" and body["region"] == "eu-west"
    assert body["tags"] == ["pilot"] and body["status"] == "active" and body["has_drift"] is False


def test_retrieve_device_by_serial(client_for, auditor, device):
    body = client_for(auditor).get(f"{API}/devices/{SERIAL}/").json()
    assert body["serial"] == SERIAL and body["tags"] == ["pilot"]


def test_list_filters_and_paginates(client_for, auditor, device):
    DeviceFactory(serial="TCU-API-0002", vehicle_type="bus", status=DeviceStatus.QUARANTINED)
    client = client_for(auditor)
    body = client.get(f"{API}/devices/", {"status": "quarantined"}).json()
    assert body["count"] == 1 and body["results"][0]["serial"] == "TCU-API-0002"
    assert client.get(f"{API}/devices/", {"tag": "pilot", "region": "eu-west"}).json()["count"] == 1
    assert client.get(f"{API}/devices/", {"search": "api-000"}).json()["count"] == 2
    assert client.get(f"{API}/devices/", {"hardware_model": "tcu-4g-r2", "drift": "false"}).json()["count"] == 1
    page = client.get(f"{API}/devices/", {"page_size": 1, "page": 2}).json()
    assert page["count"] == 2 and [d["serial"] for d in page["results"]] == ["TCU-API-0002"]


@pytest.mark.parametrize(
    "params", [{"status": "broken"}, {"vehicle_type": "ufo"}, {"search": "x" * 65}, {"search": "a\x00b"}]
)
def test_an_invalid_filter_is_a_400(client_for, auditor, params):
    _assert_error(client_for(auditor).get(f"{API}/devices/", params), 400, "invalid")


@pytest.mark.parametrize("page", ["0", "99999999999999999999999", "-1", "abc"])
def test_a_page_out_of_range_is_a_404_not_a_500(client_for, auditor, device, page):
    _assert_error(client_for(auditor).get(f"{API}/devices/", {"page": page}), 404)


def test_quarantine_then_release_moves_the_device_and_records_both(client_for, operator, device):
    client = client_for(operator)
    body = client.post(f"{API}/devices/{SERIAL}/quarantine/", {"reason": "modem resets"}, format="json").json()
    assert body["status"] == "quarantined" and body["status_reason"] == "modem resets"
    assert (
        client.post(f"{API}/devices/{SERIAL}/release/", {"reason": "fixed"}, format="json").json()["status"] == "active"
    )
    assert list(DecisionRecord.objects.values_list("action", flat=True)) == [
        "devices.device.quarantine",
        "devices.device.release",
    ]


def test_a_move_the_table_forbids_is_a_409_and_changes_nothing(client_for, operator, device):
    client = client_for(operator)
    client.post(f"{API}/devices/{SERIAL}/revoke/", {"reason": "key leaked"}, format="json")
    error = _assert_error(
        client.post(f"{API}/devices/{SERIAL}/release/", {"reason": "oops"}, format="json"), 409, "invalid_transition"
    )
    assert "revoked" in error["message"]
    assert Device.objects.get(serial=SERIAL).status == DeviceStatus.REVOKED
    assert DecisionRecord.objects.count() == 1


@pytest.mark.parametrize("body", [{}, {"reason": ""}, {"reason": "x", "force": True}, {"reason": ["x"]}])
def test_a_status_action_needs_exactly_a_reason(client_for, operator, device, body):
    error = _assert_error(client_for(operator).post(f"{API}/devices/{SERIAL}/quarantine/", body, format="json"), 400)
    assert error["fields"]
    assert Device.objects.get(serial=SERIAL).status == DeviceStatus.ACTIVE


def test_device_update_cannot_touch_serial_or_status(client_for, operator, device):
    client = client_for(operator)
    for body in ({"serial": "TCU-NEW-1"}, {"status": "revoked"}):
        error = _assert_error(client.patch(f"{API}/devices/{SERIAL}/", body, format="json"), 400)
        assert list(error["fields"]) == list(body)
    assert Device.objects.get(pk=device.pk).status == DeviceStatus.ACTIVE


def test_drift_shows_expected_next_to_reported(client_for, auditor, device):
    at = timezone.now()
    Device.objects.filter(pk=device.pk).update(reported_version="0.9.0", reported_release_counter=0, reported_at=at)
    DeviceFactory(serial="TCU-API-0002")
    body = client_for(auditor).get(f"{API}/devices/drift/").json()
    assert body["count"] == 1
    drift = body["results"][0]
    assert drift["serial"] == SERIAL
    assert drift["expected"] == {"version": "1.0.0", "release_counter": 1}
    assert drift["reported"]["version"] == "0.9.0" and drift["reported"]["release_counter"] == 0


def test_fleet_versions_counts_per_hardware_model(client_for, auditor, device):
    DeviceFactory(hardware_model=device.hardware_model, installed_version="1.1.0")
    assert client_for(auditor).get(f"{API}/fleet/versions/").json() == [
        {
            "hardware_model": "tcu-4g-r2",
            "devices": 2,
            "versions": [{"version": "1.0.0", "devices": 1}, {"version": "1.1.0", "devices": 1}],
        }
    ]


# --- bad input: always 400 in the one format, never 500, nothing written -----------------------------------------


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"colour": "red"}, "colour"),
        ({"installed_release_counter": "many"}, "installed_release_counter"),
        ({"installed_release_counter": 2**40}, "installed_release_counter"),
        ({"tags": "pilot"}, "tags"),
        ({"network_capabilities": ["lte", 5]}, "network_capabilities"),
        ({"vehicle_type": None}, "vehicle_type"),
        ({"hardware_model": {"name": "tcu-4g-r2"}}, "hardware_model"),
        ({"hardware_model": "tcu-none"}, "hardware_model"),
        ({"serial": "x" * 500}, "serial"),
        ({"serial": "TCU\x00001"}, "serial"),
        ({"installed_version": "latest"}, "installed_version"),
        ({"certificate_fingerprint": "ZZ"}, "certificate_fingerprint"),
    ],
)
def test_bad_device_fields_are_400_naming_the_field(client_for, operator, device_row, change, field):
    response = client_for(operator).post(f"{API}/devices/", {**device_row(1), **change}, format="json")
    error = _assert_error(response, 400, "invalid")
    assert field in error["fields"]
    assert not Device.objects.exists()


@pytest.mark.parametrize(
    "raw",
    [
        b'{"serial": ',
        b"[1, 2",
        b"NaN",
        b"[" * 50_000 + b"]" * 50_000,
        b'{"serial": "TCU-\\ud800-1"}',
        b'{"\\udfff": 1}',
        b"\xff\xfe{}",
    ],
)
def test_malformed_json_bodies_are_400(client_for, operator, raw):
    response = client_for(operator).post(f"{API}/devices/", raw, content_type="application/json")
    _assert_error(response, 400)
    assert not Device.objects.exists()


def test_a_json_list_body_is_400(client_for, operator, device_row):
    _assert_error(client_for(operator).post(f"{API}/devices/", [device_row(1)], format="json"), 400, "invalid")


def test_form_encoded_bodies_are_refused(client_for, operator):
    response = client_for(operator).post(
        f"{API}/regions/", "code=x&name=x&time_zone=UTC", content_type="application/x-www-form-urlencoded"
    )
    _assert_error(response, 415)
    assert not Region.objects.exists()


def test_duplicate_serial_is_400(client_for, operator, device, device_row):
    error = _assert_error(
        client_for(operator).post(f"{API}/devices/", device_row(1, serial=SERIAL), format="json"), 400, "invalid"
    )
    assert list(error["fields"]) == ["serial"]


@pytest.mark.parametrize(
    "layout",
    [
        {"scheme": "ab", "slots": ["a", "b"]},
        {"scheme": "ab", "slots": ["a", "b"], "slot_size_bytes": 1.5},
        {"scheme": "single", "oops": True},
        "ab",
    ],
)
def test_hardware_model_with_a_bad_layout_is_400(client_for, operator, layout):
    body = {"name": "tcu-x", "family": "tcu", "revision": "r1", "partition_layout": layout}
    error = _assert_error(client_for(operator).post(f"{API}/hardware-models/", body, format="json"), 400)
    assert "partition_layout" in error["fields"]
    assert not HardwareModel.objects.exists()


def test_hardware_model_name_cannot_be_patched(client_for, operator, hardware_model):
    error = _assert_error(
        client_for(operator).patch(f"{API}/hardware-models/{hardware_model.name}/", {"name": "x"}, format="json"), 400
    )
    assert error["fields"] == {"name": ["Unknown field."]}


def test_region_with_an_unknown_time_zone_is_400(client_for, operator):
    body = {"code": "moon", "name": "Moon", "time_zone": "Moon/Tranquility"}
    error = _assert_error(client_for(operator).post(f"{API}/regions/", body, format="json"), 400)
    assert "time_zone" in error["fields"]


# --- import ----------------------------------------------------------------------------------------------------


def _upload(client, data: bytes, name: str, **fields):
    return client.post(f"{API}/devices/import/", {"file": SimpleUploadedFile(name, data), **fields}, format="multipart")


def test_csv_upload_imports_every_row(client_for, operator, device_row):
    response = _upload(client_for(operator), rows_to_csv([device_row(n) for n in range(1, 6)]), "fleet.csv")
    assert response.status_code == 201, response.content
    body = response.json()
    assert {k: body[k] for k in ("rows", "created", "updated", "errors", "format", "mode")} == {
        "rows": 5,
        "created": 5,
        "updated": 0,
        "errors": [],
        "format": "csv",
        "mode": "create",
    }
    assert Device.objects.count() == 5


def test_json_upload_with_explicit_format_and_upsert(client_for, operator, device, device_row):
    data = rows_to_json([device_row(1, serial=SERIAL, installed_version="2.0.0"), device_row(2)])
    response = _upload(client_for(operator), data, "fleet.txt", format="json", mode="upsert")
    assert response.status_code == 201, response.content
    assert (response.json()["created"], response.json()["updated"]) == (1, 1)
    assert Device.objects.get(serial=SERIAL).installed_version == "2.0.0"


def test_one_bad_row_in_500_is_400_naming_the_row_and_nothing_is_written(client_for, operator, device_row):
    rows = [device_row(n) for n in range(1, 501)]
    rows[249]["hardware_model"] = "tcu-unknown"
    response = _upload(client_for(operator), rows_to_csv(rows), "fleet.csv")
    error = _assert_error(response, 400, "invalid")
    assert error["fields"] == {
        "rows": [{"row": 251, "field": "hardware_model", "message": 'Unknown hardware model "tcu-unknown".'}]
    }
    assert "nothing was imported" in error["message"]
    assert not Device.objects.exists() and not DecisionRecord.objects.exists()


def test_duplicate_serial_in_a_json_body_is_400(client_for, operator, device_row):
    body = {"rows": [device_row(1), device_row(2, serial="TCU-IMPORT-00001")]}
    error = _assert_error(client_for(operator).post(f"{API}/devices/import/", body, format="json"), 400)
    assert error["fields"]["rows"] == [
        {"row": 2, "field": "serial", "message": "TCU-IMPORT-00001 is already used in row 1 of this file."}
    ]
    assert not Device.objects.exists()


def test_json_body_rows_are_imported(client_for, operator, device_row):
    body = {"format": "json", "mode": "create", "rows": [device_row(1), device_row(2)]}
    response = client_for(operator).post(f"{API}/devices/import/", body, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["created"] == 2 and len(response.json()["sha256"]) == 64


@pytest.mark.parametrize(
    ("data", "name", "fields", "error_field"),
    [
        (b'serial,hardware_model\n"TCU-1,x\n', "fleet.csv", {}, "file"),
        (b"serial,colour\nTCU-1,red\n", "fleet.csv", {}, "file"),
        (b"\xff\xfe\x00s", "fleet.csv", {}, "file"),
        (b"[{", "fleet.json", {}, "file"),
        (b'{"rows": []}', "fleet.json", {}, "file"),
        (b"[]", "fleet.xlsx", {}, "format"),
        (b"[]", "fleet.json", {"format": "xml"}, "format"),
        (b"[]", "fleet.json", {"mode": "merge"}, "mode"),
        (b"[]", "fleet.json", {"colour": "red"}, "colour"),
        (b"", "fleet.csv", {}, "file"),
    ],
)
def test_bad_uploads_are_400_naming_the_problem(client_for, operator, data, name, fields, error_field):
    error = _assert_error(_upload(client_for(operator), data, name, **fields), 400)
    assert error_field in error["fields"]
    assert not Device.objects.exists()


def test_an_upload_over_the_size_limit_is_400(client_for, operator, device_row, monkeypatch):
    monkeypatch.setattr(importer, "MAX_IMPORT_BYTES", 64)
    error = _assert_error(_upload(client_for(operator), rows_to_json([device_row(1)]), "fleet.json"), 400)
    assert "larger than" in error["fields"]["file"][0]


def test_an_upload_without_a_file_is_400(client_for, operator):
    response = client_for(operator).post(f"{API}/devices/import/", {"mode": "create"}, format="multipart")
    assert "file" in _assert_error(response, 400)["fields"]


@pytest.mark.parametrize(
    "body",
    [{}, {"rows": []}, {"rows": "x"}, {"rows": [1]}, {"format": "csv", "rows": [{}]}, {"rows": [{}], "extra": 1}],
)
def test_bad_json_import_bodies_are_400(client_for, operator, body):
    _assert_error(client_for(operator).post(f"{API}/devices/import/", body, format="json"), 400)
    assert not Device.objects.exists()


def test_schema_documents_every_inventory_endpoint(client_for, auditor):
    response = client_for(auditor).get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    paths = json.loads(response.content)["paths"]
    for path, methods in {
        "/api/v1/hardware-models/": {"get", "post"},
        "/api/v1/hardware-models/{name}/": {"get", "patch"},
        "/api/v1/regions/": {"get", "post"},
        "/api/v1/regions/{code}/": {"get"},
        "/api/v1/devices/": {"get", "post"},
        "/api/v1/devices/{serial}/": {"get", "patch"},
        "/api/v1/devices/{serial}/quarantine/": {"post"},
        "/api/v1/devices/{serial}/release/": {"post"},
        "/api/v1/devices/{serial}/revoke/": {"post"},
        "/api/v1/devices/{serial}/decommission/": {"post"},
        "/api/v1/devices/import/": {"post"},
        "/api/v1/devices/drift/": {"get"},
        "/api/v1/fleet/versions/": {"get"},
    }.items():
        assert methods <= set(paths[path]), path
    import_body = paths["/api/v1/devices/import/"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} == set(import_body)


def test_session_import_needs_a_csrf_token_and_works_with_one(operator, device_row):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(operator)
    data = rows_to_csv([device_row(1)])
    _assert_error(_upload(client, data, "fleet.csv"), 403)
    token = "k" * 32  # any 32-character alphanumeric secret is a well-formed CSRF cookie
    client.cookies["csrftoken"] = token
    response = client.post(
        f"{API}/devices/import/",
        {"file": SimpleUploadedFile("fleet.csv", data)},
        format="multipart",
        HTTP_X_CSRFTOKEN=token,
    )
    assert response.status_code == 201, response.content
    assert Device.objects.count() == 1
