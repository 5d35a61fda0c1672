"""Trace pages and the vehicle register under /audit/ (namespace web-trace); the record pages share the prefix."""

from django.urls import path

from approvals.audit.web import trace_views

urlpatterns = [
    path("changes/<int:pk>/trace/", trace_views.change_trace, name="change-trace"),
    path("vehicles/", trace_views.vehicle_lookup, name="vehicle-lookup"),
    path("vehicles/<str:serial>/", trace_views.vehicle_register, name="vehicle-register"),
]
