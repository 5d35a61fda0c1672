# Releases moved to the `firmware` app (devices.firmware). State only: the change request's release keys
# already point at the same table (rollouts_firmwarerelease), so only Django's picture of them changes.

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("approvals", "0006_security_events"),
        ("firmware", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="changerequest",
                    name="release",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="changes",
                        to="firmware.firmwarerelease",
                    ),
                ),
                migrations.AlterField(
                    model_name="changerequest",
                    name="rollback_release",
                    field=models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="rollback_for_changes",
                        to="firmware.firmwarerelease",
                    ),
                ),
            ],
            database_operations=[],
        ),
    ]
