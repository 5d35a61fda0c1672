# Firmware releases and artifacts moved here from the `rollouts` app. State only: the tables stay where
# rollouts/migrations created them (rollouts_firmwarerelease, rollouts_firmwareartifact and the hardware models
# join table), so no data moves. rollouts 0006 and approvals 0007 repoint their foreign keys afterwards.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def content_types_follow(apps, schema_editor):
    """Existing databases: the content types (and so permissions and admin log entries) move with the models."""
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in ("firmwareartifact", "firmwarerelease"):
        if not ContentType.objects.filter(app_label="firmware", model=model).exists():
            ContentType.objects.filter(app_label="rollouts", model=model).update(app_label="firmware")


def content_types_return(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    for model in ("firmwareartifact", "firmwarerelease"):
        if not ContentType.objects.filter(app_label="rollouts", model=model).exists():
            ContentType.objects.filter(app_label="firmware", model=model).update(app_label="rollouts")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("contenttypes", "0002_remove_content_type_name"),
        ("devices", "0001_initial"),
        # The last rollouts migration that touched the release tables.
        ("rollouts", "0005_integrity_breaker_one_active_deployment"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="FirmwareArtifact",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("sha256", models.CharField(max_length=64, unique=True)),
                        ("size_bytes", models.PositiveBigIntegerField()),
                        ("storage_path", models.CharField(help_text="Path relative to ARTIFACT_ROOT.", max_length=255)),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                    ],
                    options={
                        "db_table": "rollouts_firmwareartifact",
                    },
                ),
                migrations.CreateModel(
                    name="FirmwareRelease",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("version", models.CharField(max_length=64, unique=True)),
                        (
                            "release_counter",
                            models.PositiveIntegerField(
                                help_text="Anti-rollback security epoch; never falls per hardware model, rises with security fixes."
                            ),
                        ),
                        ("artifact_name", models.CharField(help_text="File name as uploaded (allow-listed).", max_length=128)),
                        ("source_revision", models.CharField(max_length=80)),
                        ("builder", models.CharField(max_length=120)),
                        ("sbom_ref", models.CharField(blank=True, default="", max_length=500)),
                        ("notes", models.TextField(blank=True, default="")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        (
                            "artifact",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="releases",
                                to="firmware.firmwareartifact",
                            ),
                        ),
                        (
                            "created_by",
                            models.ForeignKey(
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                        (
                            "hardware_models",
                            models.ManyToManyField(
                                db_table="rollouts_firmwarerelease_hardware_models",
                                related_name="releases",
                                to="devices.hardwaremodel",
                            ),
                        ),
                    ],
                    options={
                        "db_table": "rollouts_firmwarerelease",
                        "ordering": ["-created_at", "-id"],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_follow, content_types_return, elidable=True),
    ]
