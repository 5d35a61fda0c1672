"""The check-in `work` epoch (devices.edge.quiet): bumped in the same transaction whenever a deployment becomes an
offer candidate or in flight (pending, offered, downloading, downloaded, installing, rebooting, confirming) from
outside those statuses, or such a deployment is inserted or moves to another device. Statement-level triggers with
transition tables: a wave's assignment of thousands of pending deployments is one bump, not one per row; moves
within the statuses (offered -> downloading ...) and moves out of them bump nothing (no cached "nothing to do"
answer can be stale because of them)."""

from django.db import migrations

WORK = "('pending', 'offered', 'downloading', 'downloaded', 'installing', 'rebooting', 'confirming')"

FORWARD = f"""
CREATE FUNCTION rollouts_deployment_work_inserted() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM new_rows WHERE status IN {WORK}) THEN
        PERFORM devices_checkin_epoch_bump('work');
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE FUNCTION rollouts_deployment_work_updated() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM new_rows n
        WHERE n.status IN {WORK}
          AND NOT EXISTS (
              SELECT 1 FROM old_rows o WHERE o.id = n.id AND o.device_id = n.device_id AND o.status IN {WORK}
          )
    ) THEN
        PERFORM devices_checkin_epoch_bump('work');
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER rollouts_deployment_work_epoch_insert
    AFTER INSERT ON rollouts_deployment REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rollouts_deployment_work_inserted();
CREATE TRIGGER rollouts_deployment_work_epoch_update
    AFTER UPDATE ON rollouts_deployment REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rollouts_deployment_work_updated();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS rollouts_deployment_work_epoch_insert ON rollouts_deployment;
DROP TRIGGER IF EXISTS rollouts_deployment_work_epoch_update ON rollouts_deployment;
DROP FUNCTION IF EXISTS rollouts_deployment_work_inserted();
DROP FUNCTION IF EXISTS rollouts_deployment_work_updated();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("rollouts", "0012_fleet_signal_snapshot"),
        ("devices", "0010_checkin_epochs"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
