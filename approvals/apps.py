from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Change control"

    def ready(self) -> None:
        """Listen for refusals of the shared layer and sign-in lockouts, and flush deferred security events."""
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
