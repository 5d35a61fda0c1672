"""Refuse UPDATE and DELETE on the decision record at the database level (PostgreSQL; SQLite for the demo).

TRUNCATE stays possible so that `manage.py flush` and the test runner can reset a whole database;
a truncated chain is caught by comparing with the head hash in any earlier signed export.
"""
from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION approvals_decisionrecord_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the decision record is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER approvals_decisionrecord_no_update_delete
    BEFORE UPDATE OR DELETE ON approvals_decisionrecord
    FOR EACH ROW EXECUTE FUNCTION approvals_decisionrecord_append_only();
"""

SQLITE_CREATE = [
    "CREATE TRIGGER approvals_decisionrecord_no_update BEFORE UPDATE ON approvals_decisionrecord "
    "BEGIN SELECT RAISE(ABORT, 'the decision record is append-only: UPDATE refused'); END;",
    "CREATE TRIGGER approvals_decisionrecord_no_delete BEFORE DELETE ON approvals_decisionrecord "
    "BEGIN SELECT RAISE(ABORT, 'the decision record is append-only: DELETE refused'); END;",
]
SQLITE_DROP = [
    "DROP TRIGGER IF EXISTS approvals_decisionrecord_no_update;",
    "DROP TRIGGER IF EXISTS approvals_decisionrecord_no_delete;",
]

DROP = """
DROP TRIGGER IF EXISTS approvals_decisionrecord_no_update_delete ON approvals_decisionrecord;
DROP FUNCTION IF EXISTS approvals_decisionrecord_append_only();
"""


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_CREATE:
            schema_editor.execute(statement)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)
    elif schema_editor.connection.vendor == "sqlite":
        for statement in SQLITE_DROP:
            schema_editor.execute(statement)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0001_initial")]
    operations = [migrations.RunPython(create_trigger, drop_trigger)]
