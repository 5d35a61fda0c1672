"""Device API routes; the project mounts them at /device/v1/ (no namespace, names start with `device-`)."""

from django.urls import path, re_path

from devices.edge import trust_views, views, vouch
from devices.edge.schema import DeviceSchemaView

urlpatterns = [
    path("checkin/", views.CheckinView.as_view(), name="device-checkin"),
    re_path(r"^artifacts/(?P<sha256>[0-9a-f]{64})/$", views.ArtifactView.as_view(), name="device-artifact"),
    re_path(r"^artifacts/(?P<sha256>[0-9a-f]{64})/vouch/$", vouch.artifact_vouch, name="device-artifact-vouch"),
    path("deployments/<int:deployment_id>/status/", views.StatusView.as_view(), name="device-status"),
    path("telemetry/", views.TelemetryView.as_view(), name="device-telemetry"),
    path("schema/", DeviceSchemaView.as_view(), name="device-schema"),
    path("tls-refused/", views.tls_refused, name="device-tls-refused"),
    path("director/targets.json", trust_views.DirectorTargetsView.as_view(), name="device-director-targets"),
    path("director/<int:version>.root.json", trust_views.DirectorRootView.as_view(), name="device-director-root"),
]
