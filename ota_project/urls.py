"""Top-level URL map: admin, the management API (/api/v1/), its schema and docs, and the web pages."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from ota_project import views

api_v1 = [
    path("", include("ota_project.api_urls")),
    path("", include("devices.api.urls")),
    path("", include("rollouts.api.urls")),
    path("", include("approvals.api.urls")),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("admin/", admin.site.urls),
    path("api/v1/", include((api_v1, "api"), namespace="api")),
    # The device protocol: devices authenticate with their own credential (mTLS later), never as staff users.
    path("device/v1/", include("rollouts.device_api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="swagger-ui"),
    path("api/redoc/", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]

handler404 = "ota_project.views.not_found"
handler500 = "ota_project.views.server_error"
