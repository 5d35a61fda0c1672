"""Audit pages under /audit/ (namespace web-audit); the trace pages share the prefix (rollouts.web.audit_urls)."""

from django.urls import path

from approvals.web import audit_views

urlpatterns = [
    path("", audit_views.records, name="records"),
    path("records/<int:seq>/", audit_views.record_detail, name="record"),
    path("verify/", audit_views.verify_chain, name="verify"),
    path("security/", audit_views.security, name="security"),
]
