"""Bulk import of devices from CSV or JSON: validate every row, then write all of them or nothing.

Row numbers in errors: for CSV the line of the file where the record starts (the header is line 1, so the first
device is row 2, as a spreadsheet or editor shows it); for JSON the 1-based position in the array.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import PurePath
from typing import Any

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction
from rest_framework import serializers

from approvals.audit.records import canonical_json, record_decision
from devices.choices import DeviceStatus
from devices.inputs import DeviceInput, error_messages
from devices.models import Device, HardwareModel, Region
from devices.services import identifier_holders, tags_get_or_create
from ota_project.errors import Conflict, InvalidInput
from ota_project.parsers import JSONBodyError, json_loads_strict

# Limits do not depend on settings so that every entry point (API, command) refuses the same files.
MAX_IMPORT_BYTES = 20 * 1024 * 1024
MAX_IMPORT_ROWS = 200_000
# Every row is checked, but an answer listing 200,000 errors helps nobody: list the first ones and count the rest.
MAX_REPORTED_ERRORS = 1000
FORMATS = ("csv", "json")
MODES = ("create", "upsert")
REQUIRED_COLUMNS = ("serial", "hardware_model", "region", "vehicle_type", "installed_version")
OPTIONAL_COLUMNS = (
    "vin",
    "usage_profile",
    "tags",
    "network_capabilities",
    "installed_release_counter",
    "certificate_fingerprint",
)
LIST_COLUMNS = ("tags", "network_capabilities")
LIST_SEPARATOR = ";"
_CHUNK = 5000
# Model fields an upsert overwrites on an existing device (never serial or status).
UPSERT_FIELDS = (
    "vin",
    "hardware_model",
    "region",
    "vehicle_type",
    "usage_profile",
    "network_capabilities",
    "installed_version",
    "installed_release_counter",
    "certificate_fingerprint",
)


# ---------------------------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class ImportReport:
    """What an import did (or, with errors, why it wrote nothing)."""

    rows: int
    created: int = 0
    updated: int = 0
    errors: list[dict[str, Any]] = field(default_factory=list)
    error_count: int = 0
    format: str = "json"
    mode: str = "create"
    sha256: str = ""

    @property
    def ok(self) -> bool:
        return self.error_count == 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def add_error(self, row: int, field_name: str, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"row": row, "field": field_name, "message": message})

    def as_invalid_input(self) -> InvalidInput:
        """The 400 answer for a refused import: every listed row error under fields.rows."""
        listed = "" if self.error_count <= len(self.errors) else f" (the first {len(self.errors)} are listed)"
        return InvalidInput(
            f"{self.error_count} error(s) in {self.rows} row(s){listed}; nothing was imported.",
            fields={"rows": self.errors},
        )


def _file_error(message: str) -> InvalidInput:
    return InvalidInput(message, fields={"file": [message]})


def file_too_large() -> InvalidInput:
    """The refusal for a file over MAX_IMPORT_BYTES."""
    return _file_error(f"The file is larger than {MAX_IMPORT_BYTES // (1024 * 1024)} MiB; split it.")


# ---------------------------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _MalformedRow:
    field: str
    message: str


def format_from_name(name: str | None) -> str | None:
    """csv or json from a file name's extension, or None."""
    suffix = PurePath(name or "").suffix.lower().lstrip(".")
    return suffix if suffix in FORMATS else None


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _file_error(f"The file is not UTF-8 text (invalid byte at offset {exc.start}).") from None


def _split_list(cell: str) -> list[str]:
    return [item.strip() for item in cell.split(LIST_SEPARATOR) if item.strip()]


def _parse_csv(text: str) -> list[tuple[int, Any]]:
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    try:
        header = next(reader, None)
        if header is None:
            raise _file_error("The file is empty: expected a header row and device rows.")
        columns = [name.strip() for name in header]
        duplicated = sorted({name for name in columns if columns.count(name) > 1})
        unknown = [name for name in columns if name not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
        missing = [name for name in REQUIRED_COLUMNS if name not in columns]
        problems = []
        if duplicated:
            problems.append(f"repeated columns: {', '.join(duplicated[:10])}")
        if unknown:
            problems.append(f"unknown columns: {', '.join(name[:64] for name in unknown[:10])}")
        if missing:
            problems.append(f"missing columns: {', '.join(missing)}")
        if problems:
            raise _file_error(
                "The header row is invalid ("
                + "; ".join(problems)
                + f"). Columns: {', '.join(REQUIRED_COLUMNS + OPTIONAL_COLUMNS)}."
            )
        rows: list[tuple[int, Any]] = []
        while True:
            start_line = reader.line_num + 1
            record = next(reader, None)
            if record is None:
                break
            if not any(cell.strip() for cell in record):
                continue  # blank lines carry no device
            if len(rows) >= MAX_IMPORT_ROWS:
                raise _file_error(f"The file has more than {MAX_IMPORT_ROWS} rows; split it into smaller files.")
            if len(record) > len(columns):
                rows.append((start_line, _MalformedRow("row", f"{len(record)} values but {len(columns)} columns.")))
                continue
            row: dict[str, Any] = {}
            for name, cell in zip(columns, record, strict=False):
                if name in LIST_COLUMNS:
                    row[name] = _split_list(cell)
                elif cell.strip() or name in REQUIRED_COLUMNS:
                    row[name] = cell
            for name in columns[len(record) :]:
                if name in REQUIRED_COLUMNS:
                    row[name] = ""
            rows.append((start_line, row))
    except csv.Error as exc:
        raise _file_error(f"The CSV is malformed near line {reader.line_num}: {exc}.") from None
    return rows


def _parse_json(text: str) -> list[tuple[int, Any]]:
    try:
        # The one reader of JSON from requests: refuses duplicated keys, NaN, absurd nesting and lone surrogates.
        value = json_loads_strict(text)
    except JSONBodyError as exc:
        raise _file_error(f"The file is not valid JSON: {exc}.") from None
    if not isinstance(value, list):
        raise _file_error("The JSON must be a list of device objects.")
    if len(value) > MAX_IMPORT_ROWS:
        raise _file_error(f"The file has more than {MAX_IMPORT_ROWS} rows; split it into smaller files.")
    return list(enumerate(value, start=1))


def parse_rows(data: bytes, file_format: str) -> list[tuple[int, Any]]:
    """(row number, row) pairs from a CSV or JSON file; InvalidInput (fields.file) when the file cannot be read."""
    if file_format not in FORMATS:
        raise InvalidInput("The format must be csv or json.", fields={"format": [f"Use one of: {', '.join(FORMATS)}."]})
    if len(data) > MAX_IMPORT_BYTES:
        raise file_too_large()
    text = _decode(data)
    if not text.strip():
        raise _file_error("The file is empty.")
    return _parse_csv(text) if file_format == "csv" else _parse_json(text)


# ---------------------------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------------------------


def _chunks(values: list[int]) -> Iterator[list[int]]:
    for start in range(0, len(values), _CHUNK):
        yield values[start : start + _CHUNK]


def validate_rows(
    rows: list[tuple[int, Any]], *, mode: str, report: ImportReport
) -> tuple[list[dict[str, Any]], set[str]]:
    """Check every row (shape, lookups, duplicates in the file, collisions with the inventory); errors go to report.

    The shape of a row is devices.inputs.DeviceInput, the body of POST /api/v1/devices/.

    Returns the valid rows and the serials among them that are already in the inventory.
    """
    serializer = DeviceInput(
        context={
            "hardware_models": {hm.name: hm for hm in HardwareModel.objects.all()},
            "regions": {region.code: region for region in Region.objects.all()},
        }
    )
    valid: list[dict[str, Any]] = []
    first_seen: dict[str, dict[str, int]] = {"serial": {}, "vin": {}, "certificate_fingerprint": {}}
    for number, row in rows:
        if isinstance(row, _MalformedRow):
            report.add_error(number, row.field, row.message)
            continue
        if not isinstance(row, dict):
            report.add_error(number, "row", "Each row must be an object.")
            continue
        serializer.initial_data = row
        try:
            data = serializer.run_validation(row)
        except serializers.ValidationError as exc:
            for name, message in error_messages(exc.detail):
                report.add_error(number, name, message)
            continue
        duplicate = False
        for key, seen in first_seen.items():
            value = data.get(key)
            if not value:
                continue
            if value in seen:
                report.add_error(number, key, f"{value} is already used in row {seen[value]} of this file.")
                duplicate = True
            else:
                seen[value] = number
        if not duplicate:
            data["_row"] = number
            valid.append(data)
    existing = _check_inventory(valid, mode=mode, report=report)
    return valid, existing


def _check_inventory(rows: list[dict[str, Any]], *, mode: str, report: ImportReport) -> set[str]:
    serials = identifier_holders("serial", (row["serial"] for row in rows))
    vins = identifier_holders("vin", (row.get("vin") for row in rows))
    fingerprints = identifier_holders("certificate_fingerprint", (row.get("certificate_fingerprint") for row in rows))
    for row in rows:
        number = row["_row"]
        if row["serial"] in serials and mode == "create":
            report.add_error(number, "serial", "A device with this serial already exists (use mode upsert to update).")
        for key, holders in (("vin", vins), ("certificate_fingerprint", fingerprints)):
            holder = holders.get(row.get(key) or "")
            if holder is not None and (mode == "create" or holder != row["serial"]):
                report.add_error(number, key, f"Device {holder} already has this value.")
    return set(serials)


# ---------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------


def _write(rows: list[dict[str, Any]], *, mode: str, existing: set[str], report: ImportReport) -> None:
    tags = {tag.name: tag.pk for tag in tags_get_or_create(name for row in rows for name in row["tags"])}
    devices = []
    for row in rows:
        values: dict[str, Any] = {name: row.get(name) for name in UPSERT_FIELDS}
        values["vin"] = values["vin"] or None
        values["certificate_fingerprint"] = values["certificate_fingerprint"] or None
        devices.append(Device(serial=row["serial"], status=DeviceStatus.ACTIVE, **values))
    if mode == "upsert":
        # INSERT ... ON CONFLICT (serial) DO UPDATE: existing devices keep their status, history and created_at.
        Device.objects.bulk_create(
            devices,
            batch_size=2000,
            update_conflicts=True,
            unique_fields=["serial"],
            update_fields=[*UPSERT_FIELDS, "updated_at"],
        )
    else:
        Device.objects.bulk_create(devices, batch_size=2000)
    through = Device.tags.through
    for chunk in _chunks([device.pk for device in devices if device.serial in existing]):
        through.objects.filter(device_id__in=chunk).delete()
    tag_names = {row["serial"]: sorted(row["tags"]) for row in rows}
    through.objects.bulk_create(
        [through(device_id=device.pk, tag_id=tags[name]) for device in devices for name in tag_names[device.serial]],
        batch_size=5000,
    )
    report.updated = sum(1 for device in devices if device.serial in existing)
    report.created = len(devices) - report.updated


def import_rows(
    *,
    actor: User | None,
    rows: list[tuple[int, Any]],
    mode: str = "create",
    file_format: str = "json",
    sha256: str,
) -> ImportReport:
    """Validate every row; when none has an error, write them all in one transaction with one decision record."""
    if mode not in MODES:
        raise InvalidInput("The mode must be create or upsert.", fields={"mode": [f"Use one of: {', '.join(MODES)}."]})
    if len(rows) > MAX_IMPORT_ROWS:
        raise InvalidInput(
            f"More than {MAX_IMPORT_ROWS} rows; split the import.", fields={"rows": [f"At most {MAX_IMPORT_ROWS}."]}
        )
    report = ImportReport(rows=len(rows), format=file_format, mode=mode, sha256=sha256)
    if not rows:
        raise InvalidInput("There are no device rows to import.", fields={"rows": ["No device rows."]})
    valid, existing = validate_rows(rows, mode=mode, report=report)
    if not report.ok:
        return report
    try:
        with transaction.atomic():
            _write(valid, mode=mode, existing=existing, report=report)
            record_decision(
                actor=actor,
                action="devices.import",
                object_type="device_import",
                object_id=sha256,
                after={
                    "rows": report.rows,
                    "created": report.created,
                    "updated": report.updated,
                    "format": file_format,
                    "mode": mode,
                    "sha256": sha256,
                },
                system_actor="import_devices",
            )
    except IntegrityError:
        # Another writer added a colliding serial, VIN or fingerprint after validation; the transaction is gone.
        raise Conflict(
            "The inventory changed while the import ran; nothing was imported. Run it again.", code="stale"
        ) from None
    return report


def import_file(*, actor: User | None, data: bytes, file_format: str, mode: str = "create") -> ImportReport:
    """Import devices from the bytes of a CSV or JSON file: all rows or, on any error, none."""
    rows = parse_rows(data, file_format)
    return import_rows(
        actor=actor, rows=rows, mode=mode, file_format=file_format, sha256=hashlib.sha256(data).hexdigest()
    )


def rows_sha256(rows: list[Any]) -> str:
    """sha256 of rows sent as JSON (canonical form, so the same rows always hash the same)."""
    try:
        return hashlib.sha256(canonical_json(rows).encode("utf-8")).hexdigest()
    except (UnicodeEncodeError, ValueError, TypeError):
        raise InvalidInput("The rows are not valid JSON text.", fields={"rows": ["Not valid JSON text."]}) from None


def import_upload(
    *, actor: User | None, upload: Any, file_format: str | None = None, mode: str = "create"
) -> ImportReport:
    """Import an uploaded file; the format comes from `file_format`, else from the file name's extension."""
    file_format = file_format or format_from_name(getattr(upload, "name", None))
    if file_format is None:
        raise InvalidInput(
            "Cannot tell whether the file is CSV or JSON: name it .csv or .json, or pass format.",
            fields={"format": ["Required when the file name does not end in .csv or .json."]},
        )
    size = getattr(upload, "size", None)
    if size is not None and size > MAX_IMPORT_BYTES:
        raise file_too_large()
    # Read one byte past the limit so a file whose size was not declared is still refused.
    data = upload.read(MAX_IMPORT_BYTES + 1)
    return import_file(actor=actor, data=data, file_format=file_format, mode=mode)
