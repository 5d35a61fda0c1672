"""The database refuses to offer an update or rollback to a device that is not active (quarantined, revoked,
decommissioned): the last line behind the offer path's own rule, whatever code (or forged workflow step) asks."""

from django.db import migrations

FORWARD = """
CREATE FUNCTION rollouts_deployment_offer_guard() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM devices_device WHERE id = NEW.device_id AND status <> 'active') THEN
        RAISE EXCEPTION 'deployment %: device % is not active; it may not be offered an update', NEW.id, NEW.device_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
-- The WHEN clauses are evaluated without calling the function: bulk inserts of pending deployments (a wave's
-- assignment) and every other status change cost nothing; only a row becoming offered looks at its device.
CREATE TRIGGER rollouts_deployment_offer_guard_insert
    BEFORE INSERT ON rollouts_deployment
    FOR EACH ROW WHEN (NEW.status = 'offered') EXECUTE FUNCTION rollouts_deployment_offer_guard();
CREATE TRIGGER rollouts_deployment_offer_guard_update
    BEFORE UPDATE OF status ON rollouts_deployment
    FOR EACH ROW WHEN (NEW.status = 'offered' AND OLD.status IS DISTINCT FROM 'offered')
    EXECUTE FUNCTION rollouts_deployment_offer_guard();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS rollouts_deployment_offer_guard_insert ON rollouts_deployment;
DROP TRIGGER IF EXISTS rollouts_deployment_offer_guard_update ON rollouts_deployment;
DROP FUNCTION IF EXISTS rollouts_deployment_offer_guard();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("rollouts", "0009_deployment_release_finished_index"),
        ("devices", "0007_device_install_failures_and_reason_rule"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
