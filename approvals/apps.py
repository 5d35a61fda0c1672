from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Change control"

    def ready(self) -> None:
        """Install the decision record's signing trust; listen for refusals, lockouts and request boundaries."""
        # The decision record signs and verifies through the audit key and the checkpoint log (outside the
        # database); approvals.records itself imports nothing of the project, so other apps may use it.
        from approvals.audit_checkpoints import AuditKeyTrust
        from approvals.records import record_trust_install

        record_trust_install(AuditKeyTrust())
        # Refusals of the shared layer and sign-in lockouts become security events; deferred ones are flushed.
        from axes.signals import user_locked_out
        from django.core.signals import request_finished, request_started

        from approvals import security, security_receivers
        from ota_project.signals import refusal

        refusal.connect(security_receivers.on_refusal, dispatch_uid="approvals.security.refusal")
        user_locked_out.connect(security_receivers.on_user_locked_out, dispatch_uid="approvals.security.axes")
        request_started.connect(security.security_request_begin, dispatch_uid="approvals.security.request_begin")
        request_finished.connect(
            security.flush_pending_security_events, dispatch_uid="approvals.security.request_finished"
        )
