"""A telemetry batch's COPY text (TelemetryBatch.rows, ~45 kB for 500 samples) compressed with lz4 instead of
PostgreSQL's default pglz: the accept's INSERT compresses it (pglz costs about twice lz4's CPU there) and the fold's
claim reads it back once. Only where the server was built with lz4 (PostgreSQL 14+ with --with-lz4, as Debian's
and most distributions' are); elsewhere the column keeps the default. Values stored before keep their compression
(PostgreSQL reads both)."""

from django.db import migrations

TABLE = "devices_telemetrybatch"


def _lz4_available(schema_editor) -> bool:
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("SELECT enumvals FROM pg_settings WHERE name = 'default_toast_compression'")
        row = cursor.fetchone()
    return row is not None and "lz4" in (row[0] or [])


def lz4(apps, schema_editor):
    if _lz4_available(schema_editor):
        schema_editor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN rows SET COMPRESSION lz4")


def default(apps, schema_editor):
    schema_editor.execute(f"ALTER TABLE {TABLE} ALTER COLUMN rows SET COMPRESSION DEFAULT")


class Migration(migrations.Migration):
    dependencies = [("devices", "0011_abuse_limited_keys_and_swarm_windows")]

    operations = [migrations.RunPython(lz4, default)]
