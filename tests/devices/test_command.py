"""manage.py import_devices: prints the report, exits 1 and writes nothing on any error."""

import pytest
from django.core.management import call_command, load_command_class
from django.db import connections

from approvals.audit.models import DecisionRecord
from devices.models import Device
from tests.devices.files import rows_to_csv, rows_to_json

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _keep_test_connection(monkeypatch):
    # run_from_argv closes every connection when it ends (django.db.connections, the handler it imports), which
    # would end the test's transaction.
    monkeypatch.setattr(connections, "close_all", lambda: None)


def _run(*argv: str) -> int:
    """Run the command as the shell would (run_from_argv) and return its exit status."""
    command = load_command_class("devices", "import_devices")
    try:
        command.run_from_argv(["manage.py", "import_devices", *argv])
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def test_a_valid_csv_is_imported_and_the_report_printed(tmp_path, device_row, operator, capsys):
    path = tmp_path / "fleet.csv"
    path.write_bytes(rows_to_csv([device_row(n) for n in range(1, 4)]))
    assert _run(str(path), "--actor", operator.username) == 0
    assert "Imported 3 row(s)" in capsys.readouterr().out
    assert Device.objects.count() == 3
    assert DecisionRecord.objects.get().actor_name == operator.username


def test_row_errors_are_printed_and_the_exit_status_is_1(tmp_path, device_row, capsys):
    path = tmp_path / "fleet.json"
    path.write_bytes(rows_to_json([device_row(1), device_row(2, hardware_model="tcu-unknown")]))
    assert _run(str(path)) == 1
    err = capsys.readouterr().err
    assert 'row 2: hardware_model: Unknown hardware model "tcu-unknown".' in err
    assert "nothing was imported" in err
    assert not Device.objects.exists() and not DecisionRecord.objects.exists()


def test_a_malformed_file_exits_with_status_1(tmp_path, capsys):
    path = tmp_path / "fleet.json"
    path.write_bytes(b"[{")
    assert _run(str(path)) == 1
    assert "not valid JSON" in capsys.readouterr().err


def test_the_format_option_overrides_the_extension_and_upsert_updates(tmp_path, device_row):
    path = tmp_path / "fleet.txt"
    path.write_bytes(rows_to_json([device_row(1)]))
    call_command("import_devices", str(path), "--format", "json")
    path.write_bytes(rows_to_json([device_row(1, installed_version="2.0.0")]))
    call_command("import_devices", str(path), "--format", "json", "--mode", "upsert")
    assert Device.objects.get().installed_version == "2.0.0"


def test_an_unknown_format_without_option_or_extension_exits_with_status_1(tmp_path, device_row):
    path = tmp_path / "fleet.txt"
    path.write_bytes(rows_to_json([device_row(1)]))
    assert _run(str(path)) == 1
    assert not Device.objects.exists()


@pytest.mark.parametrize("argv", [["missing.csv"], ["{file}", "--actor", "nobody"]])
def test_a_missing_file_or_unknown_actor_exits_with_status_1(tmp_path, device_row, argv):
    path = tmp_path / "fleet.csv"
    path.write_bytes(rows_to_csv([device_row(1)]))
    assert _run(*[arg.format(file=path) for arg in argv]) == 1
    assert not Device.objects.exists()
