"""The audit room's tables: the append-only, hash-chained decision record and the aggregated security events.

Both tables keep the names they had under the approvals app (approvals_decisionrecord, approvals_securityevent):
the append-only triggers of approvals migrations 0002 and 0005 are bound to the decision record's table name.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models

from approvals.audit.choices import AuditKind, FindingSeverity, SecurityEventKind


class DecisionRecord(models.Model):
    """One entry of the append-only, hash-chained log of every decision and transition."""

    seq = models.PositiveBigIntegerField(unique=True, help_text="Position in the chain, from 1.")
    created_at = models.DateTimeField()
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.PROTECT, related_name="+")
    actor_name = models.CharField(max_length=150, help_text="Username at the time, or system:<component>.")
    action = models.CharField(max_length=64)
    object_type = models.CharField(max_length=64)
    object_id = models.CharField(max_length=64)
    revision = models.PositiveIntegerField(null=True, blank=True)
    before = models.JSONField(null=True, blank=True)
    after = models.JSONField(null=True, blank=True)
    reason = models.TextField(blank=True, default="")
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    # Ed25519 over the hash by the audit key (outside the database). NULL means "never signed": records from before
    # signing at append time, pinned by the signed checkpoint that migration 0005 wrote. (Nullable also because the
    # embedded demo ran on SQLite then, where adding a NOT NULL column rebuilt the table and dropped its triggers.)
    signature = models.CharField(  # noqa: DJ001
        max_length=88, null=True, blank=True, help_text="base64 Ed25519 over the hash."
    )
    key_id = models.CharField(  # noqa: DJ001
        max_length=64, null=True, blank=True, help_text="sha256 of the signing public key."
    )

    # Idempotency key of a step that may run more than once (a retried activity, a re-run after continue-as-new):
    # an append with a key already in the chain appends nothing. NULL for decisions made exactly once by nature.
    step_key = models.CharField(  # noqa: DJ001
        max_length=200, null=True, blank=True, help_text="Idempotency key of the step that made the decision."
    )

    class Meta:
        db_table = "approvals_decisionrecord"
        ordering = ["seq"]
        indexes = [
            models.Index(fields=["object_type", "object_id"]),
            models.Index(fields=["action"]),
            models.Index(fields=["created_at"]),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["step_key"], condition=models.Q(step_key__isnull=False), name="decisionrecord_step_key_once"
            )
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} {self.object_type}:{self.object_id}"


class SecurityEvent(models.Model):
    """Refusals of one kind, from one source, by one actor, device or address within one time bucket (aggregated).

    Written only by approvals.audit.security.security_event, outside the refused request's transaction, so a rolled-back
    refusal still leaves its trace. No foreign keys on purpose: the row must not wait on, or vanish with, the user
    or device it names (an actor created in an uncommitted transaction would make the write block).
    """

    kind = models.CharField(max_length=32, choices=SecurityEventKind.choices)
    source = models.CharField(max_length=64, help_text="Where the refusal happened, e.g. device_api.status.")
    bucket = models.DateTimeField(help_text="Start of the time bucket this row counts refusals in.")
    key = models.CharField(
        max_length=100,
        help_text="Who it aggregates by: user:<id>, device:<serial>, address:<ip>, - (nobody known) or * (overflow).",
    )
    actor_id = models.BigIntegerField(null=True, blank=True, help_text="The refused person's user id, if any.")
    actor_name = models.CharField(max_length=150, blank=True, default="")
    device_serial = models.CharField(max_length=64, blank=True, default="", help_text="Serial claimed or used.")
    address = models.CharField(max_length=64, blank=True, default="", help_text="Client address (REMOTE_ADDR).")
    subject = models.CharField(max_length=200, blank=True, default="", help_text="What was asked for (latest).")
    message = models.CharField(max_length=500, help_text="The latest refusal message.")
    count = models.PositiveBigIntegerField(default=1)
    first_at = models.DateTimeField()
    last_at = models.DateTimeField()

    class Meta:
        db_table = "approvals_securityevent"
        ordering = ["-last_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "source", "bucket", "key"], name="one_security_event_per_key_and_bucket"
            ),
        ]
        indexes = [
            models.Index(fields=["kind", "source", "bucket", "address"], name="security_event_address_idx"),
            models.Index(fields=["last_at"], name="security_event_last_at_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.source} {self.key} x{self.count}"


class AuditFinding(models.Model):
    """One finding of a recurring audit (approvals.audit.findings.findings_sync opens, refreshes and resolves them).

    A finding names what it is about by type and id (`device` + serial, `change` + id, `device_certificate` +
    serial, `server_certificate` + role), not by foreign key: the audit room sits below the apps it audits. At most
    one open finding per (kind, subject, code) (constraint); it stays open, refreshed by each run, until a run no
    longer finds it."""

    kind = models.CharField(max_length=32, choices=AuditKind.choices)
    subject_type = models.CharField(max_length=32, help_text="device, change, device_certificate, server_certificate")
    subject = models.CharField(max_length=128, help_text="The subject's id: a serial, a change id, a role.")
    code = models.CharField(max_length=48, help_text="The finding, e.g. not_seen, unknown_version, expires_soon.")
    severity = models.CharField(max_length=16, choices=FindingSeverity.choices)
    message = models.TextField()
    evidence = models.JSONField(default=dict, blank=True, help_text="The figures the audit saw (times, versions).")
    first_seen_at = models.DateTimeField()
    last_seen_at = models.DateTimeField()
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["kind", "subject", "code", "first_seen_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "subject_type", "subject", "code"],
                condition=models.Q(resolved_at__isnull=True),
                name="one_open_audit_finding",
            ),
            models.CheckConstraint(condition=models.Q(kind__in=AuditKind.values), name="audit_finding_kind_known"),
            models.CheckConstraint(
                condition=models.Q(severity__in=FindingSeverity.values), name="audit_finding_severity_known"
            ),
            models.CheckConstraint(
                condition=models.Q(resolved_at__isnull=True) | models.Q(resolved_at__gte=models.F("first_seen_at")),
                name="audit_finding_resolved_after_seen",
            ),
        ]
        indexes = [models.Index(fields=["kind", "resolved_at"], name="audit_finding_kind_open")]

    def __str__(self) -> str:
        return f"{self.kind} {self.subject_type} {self.subject}: {self.code}"

    @property
    def expires_at(self) -> datetime | None:
        """When what the finding is about expires, if the audit said (evidence `expires_at`, ISO-8601)."""
        value = self.evidence.get("expires_at") if isinstance(self.evidence, dict) else None
        if not isinstance(value, str):
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None
