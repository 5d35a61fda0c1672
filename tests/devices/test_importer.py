"""Bulk import: every row checked, errors name row and field, all rows written or none."""

import hashlib
import json

import pytest

from approvals.audit.models import DecisionRecord
from devices import importer
from devices.choices import DeviceStatus
from devices.models import Device, Tag
from ota_project.errors import InvalidInput
from tests.devices.files import CSV_COLUMNS, rows_to_csv, rows_to_json
from tests.factories import DeviceFactory, HardwareModelFactory

pytestmark = pytest.mark.django_db


def _import(data: bytes, file_format: str, mode: str = "create", actor=None) -> importer.ImportReport:
    return importer.import_file(actor=actor, data=data, file_format=file_format, mode=mode)


def _file_error(data: bytes, file_format: str) -> str:
    with pytest.raises(InvalidInput) as refused:
        _import(data, file_format)
    assert not Device.objects.exists() and not DecisionRecord.objects.exists()
    return refused.value.fields["file"][0]


def test_valid_csv_creates_every_device_with_tags_and_capabilities(device_row, operator):
    data = rows_to_csv([device_row(n) for n in range(1, 11)])
    report = _import(data, "csv", actor=operator)
    assert (report.rows, report.created, report.updated, report.errors) == (10, 10, 0, [])
    device = Device.objects.get(serial="TCU-IMPORT-00001")
    assert device.network_capabilities == ["lte", "satellite"]
    assert list(device.tags.values_list("name", flat=True)) == ["pilot"]
    assert device.installed_release_counter == 14 and device.status == DeviceStatus.ACTIVE
    assert Device.objects.get(serial="TCU-IMPORT-00002").tags.count() == 0


def test_valid_json_creates_every_device(device_row):
    report = _import(rows_to_json([device_row(n) for n in range(1, 6)]), "json")
    assert report.created == 5 and Device.objects.count() == 5


def test_an_import_writes_one_decision_record_with_counts_and_file_hash(device_row, operator):
    data = rows_to_csv([device_row(n) for n in range(1, 4)])
    _import(data, "csv", actor=operator)
    record = DecisionRecord.objects.get()
    assert record.action == "devices.import" and record.actor_name == operator.username
    sha256 = hashlib.sha256(data).hexdigest()
    assert record.object_id == sha256
    assert record.after == {"rows": 3, "created": 3, "updated": 0, "format": "csv", "mode": "create", "sha256": sha256}


def test_without_an_actor_the_import_is_recorded_as_the_system(device_row):
    _import(rows_to_json([device_row(1)]), "json")
    assert DecisionRecord.objects.get().actor_name == "system:import_devices"


@pytest.mark.parametrize("file_format", ["csv", "json"])
def test_one_bad_row_in_500_names_the_row_and_nothing_is_written(device_row, file_format):
    rows = [device_row(n) for n in range(1, 501)]
    rows[316]["hardware_model"] = "tcu-unknown"
    data = rows_to_csv(rows) if file_format == "csv" else rows_to_json(rows)
    report = _import(data, file_format)
    # CSV rows are file lines (the header is line 1); JSON rows are positions in the list.
    expected_row = 318 if file_format == "csv" else 317
    assert report.errors == [
        {"row": expected_row, "field": "hardware_model", "message": 'Unknown hardware model "tcu-unknown".'}
    ]
    assert report.created == 0
    assert not Device.objects.exists() and not Tag.objects.exists() and not DecisionRecord.objects.exists()


def test_every_bad_row_and_field_is_reported(device_row):
    rows = [
        device_row(1, installed_version="1.4"),
        device_row(2),
        device_row(3, vin="I" * 17, network_capabilities=["lte", "pigeon"]),
        device_row(4, region="nowhere", installed_release_counter="many"),
    ]
    report = _import(rows_to_json(rows), "json")
    assert {(e["row"], e["field"]) for e in report.errors} == {
        (1, "installed_version"),
        (3, "vin"),
        (3, "network_capabilities"),
        (4, "region"),
        (4, "installed_release_counter"),
    }
    assert not Device.objects.exists()


def test_a_serial_twice_in_the_file_is_an_error_on_the_second_row(device_row):
    rows = [device_row(1), device_row(2), device_row(3, serial="TCU-IMPORT-00001")]
    report = _import(rows_to_csv(rows), "csv")
    assert report.errors == [
        {"row": 4, "field": "serial", "message": "TCU-IMPORT-00001 is already used in row 2 of this file."}
    ]
    assert not Device.objects.exists()


@pytest.mark.parametrize("field", ["vin", "certificate_fingerprint"])
def test_a_vin_or_fingerprint_twice_in_the_file_is_an_error(device_row, field):
    rows = [device_row(1), device_row(2, **{field: device_row(1)[field]})]
    report = _import(rows_to_json(rows), "json")
    assert [(e["row"], e["field"]) for e in report.errors] == [(2, field)]


def test_unknown_hardware_model_is_a_row_error(device_row):
    report = _import(rows_to_json([device_row(1, hardware_model="tcu-9000")]), "json")
    assert report.errors[0]["field"] == "hardware_model" and "tcu-9000" in report.errors[0]["message"]


@pytest.mark.parametrize(
    ("field", "existing"),
    [("serial", "TCU-IMPORT-00001"), ("vin", "WDB00000000000001"), ("certificate_fingerprint", f"{1:064x}")],
)
def test_identifiers_already_in_the_inventory_are_refused_in_create_mode(device_row, field, existing):
    DeviceFactory(**{field: existing})
    report = _import(rows_to_json([device_row(1)]), "json")
    assert [e["field"] for e in report.errors] == [field]
    assert Device.objects.count() == 1


def test_upsert_updates_existing_devices_and_creates_new_ones(device_row, hardware_model, operator):
    other_model = HardwareModelFactory.create(name="tcu-5g-r1")
    existing = DeviceFactory.create(
        serial="TCU-IMPORT-00001", hardware_model=hardware_model, installed_version="1.0.0", tags=["old"]
    )
    existing_status = DeviceStatus.QUARANTINED
    Device.objects.filter(pk=existing.pk).update(status=existing_status, status_reason="tamper alarm")
    rows = [device_row(1, hardware_model=other_model.name, tags=["pilot", "eu"]), device_row(2)]
    report = _import(rows_to_csv(rows), "csv", mode="upsert", actor=operator)
    assert (report.created, report.updated) == (1, 1)
    existing.refresh_from_db()
    assert existing.hardware_model == other_model and existing.installed_version == "1.4.2"
    assert existing.vin == "WDB00000000000001" and existing.status == existing_status
    assert sorted(existing.tags.values_list("name", flat=True)) == ["eu", "pilot"]
    record = DecisionRecord.objects.get()
    assert record.after is not None and record.after["updated"] == 1


def test_upsert_still_refuses_a_vin_held_by_another_device(device_row):
    DeviceFactory(serial="TCU-OTHER-1", vin="WDB00000000000001")
    report = _import(rows_to_json([device_row(1)]), "json", mode="upsert")
    assert report.errors == [{"row": 1, "field": "vin", "message": "Device TCU-OTHER-1 already has this value."}]


def test_optional_csv_cells_may_be_empty(device_row):
    row = device_row(1, vin=None, certificate_fingerprint=None, tags=[], network_capabilities=[])
    row["usage_profile"] = ""
    row["installed_release_counter"] = ""
    report = _import(rows_to_csv([row]), "csv")
    assert report.created == 1
    device = Device.objects.get()
    assert (device.vin, device.certificate_fingerprint, device.usage_profile) == (None, None, "mixed")
    assert device.installed_release_counter == 0


def test_csv_needs_only_the_required_columns(device_row):
    columns = ["serial", "hardware_model", "region", "vehicle_type", "installed_version"]
    assert _import(rows_to_csv([device_row(1)], columns=columns), "csv").created == 1


def test_an_empty_required_csv_cell_is_a_row_error(device_row):
    report = _import(rows_to_csv([device_row(1, region="")]), "csv")
    assert report.errors == [{"row": 2, "field": "region", "message": "This field may not be blank."}]


def test_a_json_row_with_an_unknown_field_is_a_row_error(device_row):
    report = _import(rows_to_json([device_row(1, colour="red")]), "json")
    assert report.errors == [{"row": 1, "field": "colour", "message": "Unknown field."}]


def test_a_json_row_that_is_not_an_object_is_a_row_error(device_row):
    report = _import(rows_to_json([device_row(1), ["TCU-1"]]), "json")
    assert report.errors == [{"row": 2, "field": "row", "message": "Each row must be an object."}]


def test_a_csv_row_with_more_values_than_columns_is_a_row_error(device_row):
    data = rows_to_csv([device_row(1)]) + b"TCU-2,a,b,c,d,e,f,g,h,i,j,k,l\n"
    report = _import(data, "csv")
    assert report.errors == [{"row": 3, "field": "row", "message": "13 values but 11 columns."}]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty"),
        (b"serial,colour\nTCU-1,red\n", "unknown columns: colour"),
        (b"serial,serial,hardware_model,region,vehicle_type,installed_version\n", "repeated columns: serial"),
        (b"serial,hardware_model\n", "missing columns: region, vehicle_type, installed_version"),
        (b"\xff\xfeserial\n", "not UTF-8"),
        (
            b'serial,hardware_model,region,vehicle_type,installed_version\n"TCU-1,tcu,eu,bus,1.0.0\n',
            "malformed",
        ),
        (
            b'serial,hardware_model,region,vehicle_type,installed_version\n"TCU-1"x,tcu,eu,bus,1.0.0\n',
            "malformed",
        ),
    ],
)
def test_an_unreadable_csv_is_refused_with_a_clear_message(data, expected):
    assert expected in _file_error(data, "csv")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'[{"serial": "TCU-1"', "not valid JSON"),
        (b'{"serial": "TCU-1"}', "must be a list"),
        (b"[NaN]", "not valid JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not valid JSON"),
        (b'[{"serial": "\\ud800"}]', "surrogate"),
        (b"\xc3\x28", "not UTF-8"),
    ],
)
def test_an_unreadable_json_file_is_refused_with_a_clear_message(data, expected):
    assert expected in _file_error(data, "json")


def test_a_file_over_the_size_limit_is_refused(monkeypatch, device_row):
    monkeypatch.setattr(importer, "MAX_IMPORT_BYTES", 100)
    assert "larger than" in _file_error(rows_to_json([device_row(1), device_row(2)]), "json")


@pytest.mark.parametrize("file_format", ["csv", "json"])
def test_a_file_over_the_row_limit_is_refused(monkeypatch, device_row, file_format):
    monkeypatch.setattr(importer, "MAX_IMPORT_ROWS", 3)
    rows = [device_row(n) for n in range(1, 5)]
    data = rows_to_csv(rows) if file_format == "csv" else rows_to_json(rows)
    assert "more than 3 rows" in _file_error(data, file_format)


def test_error_lists_are_capped_but_every_error_is_counted(monkeypatch, device_row):
    monkeypatch.setattr(importer, "MAX_REPORTED_ERRORS", 5)
    report = _import(rows_to_json([device_row(n, installed_version="x") for n in range(1, 21)]), "json")
    assert report.error_count == 20 and len(report.errors) == 5
    assert "first 5 are listed" in report.as_invalid_input().message


def test_format_comes_from_the_file_name():
    assert importer.format_from_name("fleet.CSV") == "csv"
    assert importer.format_from_name("fleet.json") == "json"
    assert importer.format_from_name("fleet.xlsx") is None


def test_csv_list_cells_split_on_semicolons_and_ignore_blanks(device_row):
    data = rows_to_csv([device_row(1)]).replace(b"pilot", b" pilot ; eu-pilot ;")
    _import(data, "csv")
    assert sorted(Device.objects.get().tags.values_list("name", flat=True)) == ["eu-pilot", "pilot"]


def test_rows_sha256_is_independent_of_key_order(device_row):
    row = device_row(1)
    assert importer.rows_sha256([row]) == importer.rows_sha256([json.loads(json.dumps(row, sort_keys=True))])


def test_csv_columns_of_the_test_helper_are_exactly_the_importer_columns():
    assert sorted(CSV_COLUMNS) == sorted(importer.REQUIRED_COLUMNS + importer.OPTIONAL_COLUMNS)
