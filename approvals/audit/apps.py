from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The audit room: decision record, checkpoints and keys, exports, security events and the auditors' pages."""

    name = "approvals.audit"
    label = "audit"
    verbose_name = "Audit"

    def ready(self) -> None:
        """Install the decision record's signing trust; listen for refusals, lockouts and request boundaries."""
        # The decision record signs and verifies through the audit key and the checkpoint log (outside the
        # database); approvals.audit.records itself imports no app room, so every other app may use it.
        from approvals.audit.checkpoints import AuditKeyTrust
        from approvals.audit.records import record_trust_install

        record_trust_install(AuditKeyTrust())
        # Refusals of the shared layer and sign-in lockouts become security events.
        from axes.signals import user_locked_out
        from django.core.signals import request_started

        from approvals.audit import security, security_receivers
        from ota_project.signals import refusal

        refusal.connect(security_receivers.on_refusal, dispatch_uid="audit.security.refusal")
        user_locked_out.connect(security_receivers.on_user_locked_out, dispatch_uid="audit.security.axes")
        request_started.connect(security.security_request_begin, dispatch_uid="audit.security.request_begin")
