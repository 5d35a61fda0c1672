"""The check-in epochs (devices.edge.quiet) and the triggers that bump the `identity` one: whatever code path
revokes a credential, supersedes a certificate, moves a device out of active status or to another region, or
changes a region's poll interval or check-in budget bumps it in the same transaction. Bumped at most once per
statement (the row remembers the transaction and statement that last bumped it), so a bulk change is one row
update; the WHEN clauses are evaluated without calling
the function, so a check-in's own UPDATE of the device (report columns) costs nothing. The `work` epoch's trigger
is in rollouts 0012 (it watches deployments)."""


from django.db import migrations, models



BUMP = """
CREATE FUNCTION devices_checkin_epoch_bump(epoch text) RETURNS void AS $$
BEGIN
    INSERT INTO devices_checkinepoch (name, value, bumped_by) VALUES (epoch, 1, txid_current()::text || '@' || statement_timestamp()::text)
    ON CONFLICT (name) DO UPDATE SET value = devices_checkinepoch.value + 1, bumped_by = EXCLUDED.bumped_by
    WHERE devices_checkinepoch.bumped_by IS DISTINCT FROM EXCLUDED.bumped_by;
END
$$ LANGUAGE plpgsql;
CREATE FUNCTION devices_checkin_identity_changed() RETURNS trigger AS $$
BEGIN
    PERFORM devices_checkin_epoch_bump('identity');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
INSERT INTO devices_checkinepoch (name, value, bumped_by) VALUES ('work', 0, ''), ('identity', 0, '') ON CONFLICT DO NOTHING;
CREATE TRIGGER devices_device_identity_epoch
    AFTER UPDATE OF status, region_id, serial ON devices_device FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.region_id IS DISTINCT FROM NEW.region_id
          OR OLD.serial IS DISTINCT FROM NEW.serial)
    EXECUTE FUNCTION devices_checkin_identity_changed();
CREATE TRIGGER devices_device_identity_epoch_delete
    AFTER DELETE ON devices_device FOR EACH STATEMENT EXECUTE FUNCTION devices_checkin_identity_changed();
CREATE TRIGGER devices_credential_identity_epoch
    AFTER UPDATE OF secret_hash, revoked_at, device_id ON devices_devicecredential FOR EACH ROW
    WHEN (OLD.secret_hash IS DISTINCT FROM NEW.secret_hash OR OLD.revoked_at IS DISTINCT FROM NEW.revoked_at
          OR OLD.device_id IS DISTINCT FROM NEW.device_id)
    EXECUTE FUNCTION devices_checkin_identity_changed();
CREATE TRIGGER devices_credential_identity_epoch_delete
    AFTER DELETE ON devices_devicecredential FOR EACH STATEMENT EXECUTE FUNCTION devices_checkin_identity_changed();
CREATE TRIGGER devices_certificate_identity_epoch
    AFTER UPDATE OF status, fingerprint, device_id ON devices_devicecertificate FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.fingerprint IS DISTINCT FROM NEW.fingerprint
          OR OLD.device_id IS DISTINCT FROM NEW.device_id)
    EXECUTE FUNCTION devices_checkin_identity_changed();
CREATE TRIGGER devices_certificate_identity_epoch_delete
    AFTER DELETE ON devices_devicecertificate FOR EACH STATEMENT EXECUTE FUNCTION devices_checkin_identity_changed();
CREATE TRIGGER devices_region_identity_epoch
    AFTER UPDATE OF poll_interval_seconds, max_checkins_per_window ON devices_region FOR EACH ROW
    WHEN (OLD.poll_interval_seconds IS DISTINCT FROM NEW.poll_interval_seconds
          OR OLD.max_checkins_per_window IS DISTINCT FROM NEW.max_checkins_per_window)
    EXECUTE FUNCTION devices_checkin_identity_changed();
"""

UNBUMP = """
DROP TRIGGER IF EXISTS devices_device_identity_epoch ON devices_device;
DROP TRIGGER IF EXISTS devices_device_identity_epoch_delete ON devices_device;
DROP TRIGGER IF EXISTS devices_credential_identity_epoch ON devices_devicecredential;
DROP TRIGGER IF EXISTS devices_credential_identity_epoch_delete ON devices_devicecredential;
DROP TRIGGER IF EXISTS devices_certificate_identity_epoch ON devices_devicecertificate;
DROP TRIGGER IF EXISTS devices_certificate_identity_epoch_delete ON devices_devicecertificate;
DROP TRIGGER IF EXISTS devices_region_identity_epoch ON devices_region;
DROP FUNCTION IF EXISTS devices_checkin_identity_changed();
DROP FUNCTION IF EXISTS devices_checkin_epoch_bump(text);
"""


class Migration(migrations.Migration):

    dependencies = [
        ('devices', '0009_device_attested_nonce'),
    ]

    operations = [
        migrations.CreateModel(
            name='CheckinEpoch',
            fields=[
                ('name', models.CharField(max_length=16, primary_key=True, serialize=False)),
                ('value', models.BigIntegerField(default=0)),
                ('bumped_by', models.CharField(blank=True, default='', max_length=64)),
            ],
        ),
        migrations.RunSQL(BUMP, UNBUMP),
    ]
