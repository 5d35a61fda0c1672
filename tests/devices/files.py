"""Build import files from rows (CSV as the importer reads it, JSON)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

CSV_COLUMNS = [
    "serial",
    "vin",
    "hardware_model",
    "region",
    "vehicle_type",
    "usage_profile",
    "tags",
    "network_capabilities",
    "installed_version",
    "installed_release_counter",
    "certificate_fingerprint",
]


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str] | None = None) -> bytes:
    """Write rows as the importer's CSV (lists joined with ';')."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns or CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                key: ";".join(value) if isinstance(value, list) else ("" if value is None else value)
                for key, value in row.items()
            }
        )
    return out.getvalue().encode()


def rows_to_json(rows: list[Any]) -> bytes:
    return json.dumps(rows).encode()
