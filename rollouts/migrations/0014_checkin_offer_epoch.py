"""The check-in `offer` epoch (devices.edge.quiet): bumped in the same transaction by whatever could withdraw or
change a live offer a web process re-sends from memory. An offered deployment that changes (leaves offered, or its
device, release, kind, rollout, deadline or director metadata changes) or is deleted; a rollout's status, gate,
plan, change or releases; a wave's status, breaker or rollout, or a wave inserted or deleted; the change's status;
any change to a firmware release, its artifact or its supported hardware models; a device's hardware model or
installed counter (anti-rollback); a region's code or time zone (maintenance windows); image targets and director
roots (the offer's director metadata). At most one bump per statement (devices_checkin_epoch_bump); the offered
deployments are watched by statement-level triggers with transition tables (a halt cancelling thousands of offers is
one bump), the rest by row triggers whose WHEN clauses run without calling a function."""

from django.db import migrations

DEPLOYMENT = """
CREATE FUNCTION devices_checkin_offer_changed() RETURNS trigger AS $$
BEGIN
    PERFORM devices_checkin_epoch_bump('offer');
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
INSERT INTO devices_checkinepoch (name, value, bumped_by) VALUES ('offer', 0, '') ON CONFLICT DO NOTHING;
CREATE FUNCTION rollouts_deployment_offer_updated() RETURNS trigger AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM old_rows o JOIN new_rows n ON n.id = o.id
        WHERE o.status = 'offered'
          AND (n.status, n.device_id, n.release_id, n.kind, n.rollout_id, n.deadline_at, n.director_targets,
               n.director_expires)
              IS DISTINCT FROM
              (o.status, o.device_id, o.release_id, o.kind, o.rollout_id, o.deadline_at, o.director_targets,
               o.director_expires)
    ) THEN
        PERFORM devices_checkin_epoch_bump('offer');
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE FUNCTION rollouts_deployment_offer_deleted() RETURNS trigger AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM old_rows WHERE status = 'offered') THEN
        PERFORM devices_checkin_epoch_bump('offer');
    END IF;
    RETURN NULL;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER rollouts_deployment_offer_epoch_update
    AFTER UPDATE ON rollouts_deployment REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rollouts_deployment_offer_updated();
CREATE TRIGGER rollouts_deployment_offer_epoch_delete
    AFTER DELETE ON rollouts_deployment REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION rollouts_deployment_offer_deleted();
"""

# (trigger name, table, the row trigger's event and WHEN clause); every table also bumps on DELETE (statement).
ROW_TRIGGERS = (
    (
        "rollouts_rollout_offer_epoch",
        "rollouts_rollout",
        "UPDATE",
        "(OLD.status, OLD.gate, OLD.plan, OLD.change_id, OLD.release_id, OLD.rollback_release_id)"
        " IS DISTINCT FROM (NEW.status, NEW.gate, NEW.plan, NEW.change_id, NEW.release_id, NEW.rollback_release_id)",
    ),
    (
        "rollouts_wave_offer_epoch",
        "rollouts_wave",
        "UPDATE",
        "(OLD.status, OLD.breaker_tripped_at, OLD.rollout_id)"
        " IS DISTINCT FROM (NEW.status, NEW.breaker_tripped_at, NEW.rollout_id)",
    ),
    (
        "approvals_changerequest_offer_epoch",
        "approvals_changerequest",
        "UPDATE",
        "OLD.status IS DISTINCT FROM NEW.status",
    ),
    ("rollouts_firmwarerelease_offer_epoch", "rollouts_firmwarerelease", "UPDATE", "OLD.* IS DISTINCT FROM NEW.*"),
    ("rollouts_firmwareartifact_offer_epoch", "rollouts_firmwareartifact", "UPDATE", "OLD.* IS DISTINCT FROM NEW.*"),
    (
        "devices_device_offer_epoch",
        "devices_device",
        "UPDATE OF hardware_model_id, installed_release_counter",
        "(OLD.hardware_model_id, OLD.installed_release_counter)"
        " IS DISTINCT FROM (NEW.hardware_model_id, NEW.installed_release_counter)",
    ),
    (
        "devices_region_offer_epoch",
        "devices_region",
        "UPDATE OF code, time_zone",
        "(OLD.code, OLD.time_zone) IS DISTINCT FROM (NEW.code, NEW.time_zone)",
    ),
)
# Tables whose every INSERT, UPDATE and DELETE statement bumps (rare writes: releases' hardware models, image
# targets, director roots, waves' creation).
STATEMENT_TRIGGERS = (
    (
        "rollouts_firmwarerelease_hardware_models_offer_epoch",
        "rollouts_firmwarerelease_hardware_models",
        "INSERT OR UPDATE OR DELETE",
    ),
    ("firmware_imagetarget_offer_epoch", "firmware_imagetarget", "INSERT OR UPDATE OR DELETE"),
    ("firmware_directorroot_offer_epoch", "firmware_directorroot", "INSERT OR UPDATE OR DELETE"),
    ("rollouts_wave_offer_epoch_insert", "rollouts_wave", "INSERT"),
)

FORWARD = (
    DEPLOYMENT
    + "".join(
        f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW WHEN ({when})"
        " EXECUTE FUNCTION devices_checkin_offer_changed();\n"
        f"CREATE TRIGGER {name}_delete AFTER DELETE ON {table} FOR EACH STATEMENT"
        " EXECUTE FUNCTION devices_checkin_offer_changed();\n"
        for name, table, event, when in ROW_TRIGGERS
    )
    + "".join(
        f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH STATEMENT EXECUTE FUNCTION devices_checkin_offer_changed();\n"
        for name, table, event in STATEMENT_TRIGGERS
    )
)

BACKWARD = (
    "DROP TRIGGER IF EXISTS rollouts_deployment_offer_epoch_update ON rollouts_deployment;\n"
    "DROP TRIGGER IF EXISTS rollouts_deployment_offer_epoch_delete ON rollouts_deployment;\n"
    + "".join(
        f"DROP TRIGGER IF EXISTS {name} ON {table};\nDROP TRIGGER IF EXISTS {name}_delete ON {table};\n"
        for name, table, _, _ in ROW_TRIGGERS
    )
    + "".join(f"DROP TRIGGER IF EXISTS {name} ON {table};\n" for name, table, _ in STATEMENT_TRIGGERS)
    + "DROP FUNCTION IF EXISTS rollouts_deployment_offer_updated();\n"
    "DROP FUNCTION IF EXISTS rollouts_deployment_offer_deleted();\n"
    "DROP FUNCTION IF EXISTS devices_checkin_offer_changed();\n"
    "DELETE FROM devices_checkinepoch WHERE name = 'offer';\n"
)


class Migration(migrations.Migration):
    dependencies = [
        ("rollouts", "0013_checkin_work_epoch"),
        ("devices", "0010_checkin_epochs"),
        ("approvals", "0011_post_review_due"),
        ("firmware", "0006_expiry_alerts_become_audit_findings"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
