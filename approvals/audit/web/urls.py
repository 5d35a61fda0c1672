"""Audit pages under /audit/ (namespace web-audit); the trace pages share the prefix (approvals.audit.web.trace_urls)."""

from django.urls import path

from approvals.audit.web import findings_views, views

urlpatterns = [
    path("", views.records, name="records"),
    path("records/<int:seq>/", views.record_detail, name="record"),
    path("verify/", views.verify_chain, name="verify"),
    path("security/", views.security, name="security"),
    path("findings/", findings_views.findings, name="findings"),
]
