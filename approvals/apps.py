from django.apps import AppConfig


class ApprovalsConfig(AppConfig):
    name = "approvals"
    verbose_name = "Change control"

    def ready(self) -> None:
        # The decision record signs and verifies through the audit key and the checkpoint log (outside the
        # database); approvals.records itself imports nothing of the project, so other apps may use it.
        from approvals.audit_checkpoints import AuditKeyTrust
        from approvals.records import record_trust_install

        record_trust_install(AuditKeyTrust())
