"""A decision record may carry the idempotency key of the step that made it; a key appears at most once.

The column is nullable (old records and decisions made once by nature have none), so it is added in place on both
engines: SQLite does not rebuild the table, and the append-only triggers of 0002 stay.
"""

from django.db import migrations, models
from django.db.models import Q


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [
        migrations.AddField(
            model_name="decisionrecord",
            name="step_key",
            field=models.CharField(
                blank=True,
                help_text="Idempotency key of the step that made the decision.",
                max_length=200,
                null=True,
            ),
        ),
        migrations.AddConstraint(
            model_name="decisionrecord",
            constraint=models.UniqueConstraint(
                condition=Q(step_key__isnull=False), fields=("step_key",), name="decisionrecord_step_key_once"
            ),
        ),
    ]
