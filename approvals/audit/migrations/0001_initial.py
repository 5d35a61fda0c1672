"""The decision record and the security events move from the approvals app to the audit room (state only).

The tables keep their names (Meta.db_table), rows, constraints, indexes and the append-only triggers of approvals
migrations 0002 and 0005, so nothing happens in the database: this migration adds the models to the audit app's
state, and approvals 0008_records_moved_to_audit removes them from the approvals app's state.
"""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("approvals", "0006_security_events"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            database_operations=[],
            state_operations=[
                migrations.CreateModel(
                    name="SecurityEvent",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "kind",
                            models.CharField(
                                choices=[
                                    ("device_auth_failed", "Device authentication failed"),
                                    ("device_replay", "Device report replayed"),
                                    ("device_stale_report", "Stale device report"),
                                    ("device_cross_device", "Device named another device's deployment"),
                                    ("device_artifact_refused", "Image not offered to the device"),
                                    ("action_forged", "Forged or unverifiable action"),
                                    ("action_unauthorised", "Action not permitted"),
                                    ("stale_revision", "Decision on a stale revision"),
                                    ("start_refused", "Rollout start refused"),
                                    ("login_locked_out", "Sign-in locked out"),
                                    ("api_auth_failed", "API authentication failed"),
                                ],
                                max_length=32,
                            ),
                        ),
                        (
                            "source",
                            models.CharField(
                                help_text="Where the refusal happened, e.g. device_api.status.", max_length=64
                            ),
                        ),
                        (
                            "bucket",
                            models.DateTimeField(help_text="Start of the time bucket this row counts refusals in."),
                        ),
                        (
                            "key",
                            models.CharField(
                                help_text="Who it aggregates by: user:<id>, device:<serial>, address:<ip>, - (nobody known) or * (overflow).",
                                max_length=100,
                            ),
                        ),
                        (
                            "actor_id",
                            models.BigIntegerField(
                                blank=True, help_text="The refused person's user id, if any.", null=True
                            ),
                        ),
                        ("actor_name", models.CharField(blank=True, default="", max_length=150)),
                        (
                            "device_serial",
                            models.CharField(
                                blank=True, default="", help_text="Serial claimed or used.", max_length=64
                            ),
                        ),
                        (
                            "address",
                            models.CharField(
                                blank=True, default="", help_text="Client address (REMOTE_ADDR).", max_length=64
                            ),
                        ),
                        (
                            "subject",
                            models.CharField(
                                blank=True, default="", help_text="What was asked for (latest).", max_length=200
                            ),
                        ),
                        ("message", models.CharField(help_text="The latest refusal message.", max_length=500)),
                        ("count", models.PositiveBigIntegerField(default=1)),
                        ("first_at", models.DateTimeField()),
                        ("last_at", models.DateTimeField()),
                    ],
                    options={
                        "db_table": "approvals_securityevent",
                        "ordering": ["-last_at", "-id"],
                        "indexes": [
                            models.Index(
                                fields=["kind", "source", "bucket", "address"], name="security_event_address_idx"
                            ),
                            models.Index(fields=["last_at"], name="security_event_last_at_idx"),
                        ],
                        "constraints": [
                            models.UniqueConstraint(
                                fields=("kind", "source", "bucket", "key"), name="one_security_event_per_key_and_bucket"
                            )
                        ],
                    },
                ),
                migrations.CreateModel(
                    name="DecisionRecord",
                    fields=[
                        (
                            "id",
                            models.BigAutoField(
                                auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                            ),
                        ),
                        (
                            "seq",
                            models.PositiveBigIntegerField(help_text="Position in the chain, from 1.", unique=True),
                        ),
                        ("created_at", models.DateTimeField()),
                        (
                            "actor_name",
                            models.CharField(help_text="Username at the time, or system:<component>.", max_length=150),
                        ),
                        ("action", models.CharField(max_length=64)),
                        ("object_type", models.CharField(max_length=64)),
                        ("object_id", models.CharField(max_length=64)),
                        ("revision", models.PositiveIntegerField(blank=True, null=True)),
                        ("before", models.JSONField(blank=True, null=True)),
                        ("after", models.JSONField(blank=True, null=True)),
                        ("reason", models.TextField(blank=True, default="")),
                        ("prev_hash", models.CharField(max_length=64)),
                        ("hash", models.CharField(max_length=64, unique=True)),
                        (
                            "signature",
                            models.CharField(
                                blank=True, help_text="base64 Ed25519 over the hash.", max_length=88, null=True
                            ),
                        ),
                        (
                            "key_id",
                            models.CharField(
                                blank=True, help_text="sha256 of the signing public key.", max_length=64, null=True
                            ),
                        ),
                        (
                            "actor",
                            models.ForeignKey(
                                null=True,
                                on_delete=django.db.models.deletion.PROTECT,
                                related_name="+",
                                to=settings.AUTH_USER_MODEL,
                            ),
                        ),
                    ],
                    options={
                        "db_table": "approvals_decisionrecord",
                        "ordering": ["seq"],
                        "indexes": [
                            models.Index(fields=["object_type", "object_id"], name="approvals_d_object__45d5b2_idx"),
                            models.Index(fields=["action"], name="approvals_d_action_b2f280_idx"),
                            models.Index(fields=["created_at"], name="approvals_d_created_fed9c5_idx"),
                        ],
                    },
                ),
            ],
        ),
    ]
