# Releases moved to the `firmware` app (devices.firmware). State only: the foreign keys of Rollout and
# Deployment already point at the same tables, so only Django's picture of them changes; then the two models
# leave this app's state. Runs after approvals 0007 has repointed its own keys, so that no model still refers
# to rollouts.FirmwareRelease when it is removed.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0007_release_moved_to_firmware"),
        ("firmware", "0001_initial"),
        ("rollouts", "0005_integrity_breaker_one_active_deployment"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="rollout",
                    name="release",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="rollouts",
                        to="firmware.firmwarerelease",
                    ),
                ),
                migrations.AlterField(
                    model_name="rollout",
                    name="rollback_release",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="firmware.firmwarerelease",
                    ),
                ),
                migrations.AlterField(
                    model_name="deployment",
                    name="release",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="firmware.firmwarerelease",
                    ),
                ),
                migrations.DeleteModel(name="FirmwareRelease"),
                migrations.DeleteModel(name="FirmwareArtifact"),
            ],
            database_operations=[],
        ),
    ]
