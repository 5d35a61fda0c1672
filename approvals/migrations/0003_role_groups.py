"""Create one Django group per role (the roles are fixed; membership is data)."""
from django.db import migrations

ROLES = ["requester", "cab_member", "emergency_cab", "security_officer", "operator", "auditor"]


def create_groups(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    for name in ROLES:
        Group.objects.get_or_create(name=name)


class Migration(migrations.Migration):
    dependencies = [("approvals", "0002_decision_record_append_only"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(create_groups, migrations.RunPython.noop)]
