"""Sign each decision record at append time, pin the records from before with a signed checkpoint, refuse TRUNCATE.

- `signature` and `key_id` are nullable (NULL: a record from before this migration). Nullable columns are added
  in place on both engines: SQLite would otherwise rebuild the table and lose the append-only triggers of 0002.
- Existing records are not rewritten (the table is append-only and re-signing old rows would vouch for whatever
  they hold). Instead, if the chain verifies, one checkpoint signed by the audit key pins its head; through the hash
  chain it pins every record before it, and verification reports them as "unsigned legacy". A broken chain is not
  signed: verification keeps reporting the break.
- A statement-level trigger refuses TRUNCATE on PostgreSQL (SQLite has none). Resetting a whole database on purpose
  (the test runner's flush) must say so in its session: SET ota.allow_decision_record_reset = 'on'.
"""

from django.db import migrations, models

from approvals.audit.checkpoints import checkpoint_append
from approvals.audit.records import GENESIS_HASH, record_hash

CREATE_NO_TRUNCATE = """
CREATE OR REPLACE FUNCTION approvals_decisionrecord_no_truncate() RETURNS trigger AS $$
BEGIN
    IF current_setting('ota.allow_decision_record_reset', true) = 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'the decision record is append-only: TRUNCATE refused'
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER approvals_decisionrecord_no_truncate
    BEFORE TRUNCATE ON approvals_decisionrecord
    FOR EACH STATEMENT EXECUTE FUNCTION approvals_decisionrecord_no_truncate();
"""

DROP_NO_TRUNCATE = """
DROP TRIGGER IF EXISTS approvals_decisionrecord_no_truncate ON approvals_decisionrecord;
DROP FUNCTION IF EXISTS approvals_decisionrecord_no_truncate();
"""


def create_truncate_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_NO_TRUNCATE, params=None)


def drop_truncate_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_NO_TRUNCATE, params=None)


def sign_legacy_head(apps, schema_editor):
    """Pin the records from before signing at append time with one signed checkpoint, if their chain is intact."""
    records = apps.get_model("approvals", "DecisionRecord").objects.order_by("seq")
    expected_prev, expected_seq, head = GENESIS_HASH, 1, None
    for record in records.iterator(chunk_size=2000):
        if record.seq != expected_seq or record.prev_hash != expected_prev or record_hash(record) != record.hash:
            print(f"\n  decision record broken at #{record.seq}: no legacy checkpoint signed (run audit_verify)")
            return
        expected_prev, expected_seq, head = record.hash, expected_seq + 1, record
    if head is not None:
        checkpoint_append(seq=head.seq, head_hash=head.hash)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0004_default_risk_and_policy")]
    operations = [
        migrations.AddField(
            model_name="decisionrecord",
            name="signature",
            field=models.CharField(blank=True, help_text="base64 Ed25519 over the hash.", max_length=88, null=True),
        ),
        migrations.AddField(
            model_name="decisionrecord",
            name="key_id",
            field=models.CharField(blank=True, help_text="sha256 of the signing public key.", max_length=64, null=True),
        ),
        migrations.RunPython(create_truncate_trigger, drop_truncate_trigger),
        migrations.RunPython(sign_legacy_head, migrations.RunPython.noop),
    ]
