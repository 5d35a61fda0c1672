"""The decision record and the security events now belong to the audit room (approvals.audit, label "audit").

State only for the models: the tables (approvals_decisionrecord, approvals_securityevent), their rows and the
append-only triggers stay as they are; audit 0001_initial took the models into its state first. No other model
has a foreign key to them. The content types follow the models, so admin log entries and any permission granted
on them keep pointing at the same rows.
"""

from django.db import migrations

MOVED_MODELS = ("decisionrecord", "securityevent")


def _relabel(apps, old_label: str, new_label: str) -> None:
    content_type = apps.get_model("contenttypes", "ContentType")
    for model in MOVED_MODELS:
        # A content type under the new label exists only if post_migrate ran in between: keep that one then.
        if not content_type.objects.filter(app_label=new_label, model=model).exists():
            content_type.objects.filter(app_label=old_label, model=model).update(app_label=new_label)


def content_types_to_audit(apps, schema_editor):
    _relabel(apps, "approvals", "audit")


def content_types_to_approvals(apps, schema_editor):
    _relabel(apps, "audit", "approvals")


class Migration(migrations.Migration):
    dependencies = [
        ("approvals", "0007_release_moved_to_firmware"),
        ("audit", "0001_initial"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.DeleteModel(name="DecisionRecord"),
                migrations.DeleteModel(name="SecurityEvent"),
            ],
        ),
        migrations.RunPython(content_types_to_audit, content_types_to_approvals),
    ]
