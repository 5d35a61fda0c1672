"""The auditor's endpoints, included by the project under /api/v1/audit/."""

from django.urls import path

from approvals.audit.api import views

urlpatterns = [
    path("records/", views.DecisionRecordListView.as_view(), name="audit-record-list"),
    path("records/<int:seq>/", views.DecisionRecordDetailView.as_view(), name="audit-record-detail"),
    path("verify/", views.ChainVerifyView.as_view(), name="audit-verify"),
    path("export/", views.AuditExportView.as_view(), name="audit-export"),
    path("security-events/", views.SecurityEventListView.as_view(), name="audit-security-event-list"),
    path(
        "security-events/summary/",
        views.SecurityEventSummaryView.as_view(),
        name="audit-security-event-summary",
    ),
    path("public-key/", views.AuditPublicKeyView.as_view(), name="audit-public-key"),
]
