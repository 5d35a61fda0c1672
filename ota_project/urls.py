"""Top-level URL map: admin, the management API (/api/v1/), its schema and docs, and the web pages."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

api_v1 = [
    path("", include("ota_project.api_urls")),
    path("", include("devices.api.urls")),
    path("", include("devices.firmware.api.urls")),
    path("", include("rollouts.api.urls")),
    path("", include("approvals.api.urls")),
    path("audit/", include("approvals.audit.api.urls")),
]

# The web UI: each app owns its pages; the shared layer owns sign-in and the layout.
web = [
    path("", include("rollouts.web.home_urls")),
    path("", include("ota_project.web.urls")),
    path("changes/", include(("approvals.web.change_urls", "web-changes"), namespace="web-changes")),
    path("audit/", include(("approvals.audit.web.urls", "web-audit"), namespace="web-audit")),
    path("audit/", include(("approvals.audit.web.trace_urls", "web-trace"), namespace="web-trace")),
    path("rollouts/", include(("rollouts.web.urls", "web-rollouts"), namespace="web-rollouts")),
    path("fleet/", include(("devices.web.urls", "web-fleet"), namespace="web-fleet")),
    path("alerts/", include(("rollouts.web.alert_urls", "web-alerts"), namespace="web-alerts")),
]

urlpatterns = [
    *web,
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    # The device protocol: devices authenticate with their own credential (mTLS later), never as staff users.
    path("device/v1/", include("devices.edge.urls")),
    # The image repository (TUF metadata and targets) as static files; production serves the directory from a CDN.
    path("repository/image/", include("devices.edge.repository_urls")),
    # Prometheus scrapes with a bearer token (rollouts.metrics; README "Metrics and Grafana").
    path("", include("rollouts.metrics_urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

handler404 = "ota_project.views.not_found"
handler500 = "ota_project.views.server_error"
