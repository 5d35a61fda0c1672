"""Fleet inventory endpoints under /api/v1/."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from devices.api import views

router = SimpleRouter()
router.register("hardware-models", views.HardwareModelViewSet, basename="hardware-model")
router.register("regions", views.RegionViewSet, basename="region")
router.register("devices", views.DeviceViewSet, basename="device")

urlpatterns = [
    path("fleet/versions/", views.FleetVersionsView.as_view(), name="fleet-versions"),
    *router.urls,
]
