"""The auditor's endpoints, included by the project under /api/v1/audit/."""

from django.urls import path

from approvals.api import audit_views

urlpatterns = [
    path("records/", audit_views.DecisionRecordListView.as_view(), name="audit-record-list"),
    path("records/<int:seq>/", audit_views.DecisionRecordDetailView.as_view(), name="audit-record-detail"),
    path("verify/", audit_views.ChainVerifyView.as_view(), name="audit-verify"),
    path("export/", audit_views.AuditExportView.as_view(), name="audit-export"),
    path("security-events/", audit_views.SecurityEventListView.as_view(), name="audit-security-event-list"),
    path(
        "security-events/summary/",
        audit_views.SecurityEventSummaryView.as_view(),
        name="audit-security-event-summary",
    ),
    path("public-key/", audit_views.AuditPublicKeyView.as_view(), name="audit-public-key"),
]
