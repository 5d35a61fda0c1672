"""Firmware release endpoints, included under /api/v1/ (namespace `api`)."""

from django.urls import path

from devices.firmware.api import views

urlpatterns = [
    path("releases/", views.ReleaseListCreateView.as_view(), name="release-list"),
    path("releases/<int:pk>/", views.ReleaseDetailView.as_view(), name="release-detail"),
    path("releases/<int:pk>/artifact/", views.ReleaseArtifactView.as_view(), name="release-artifact"),
]
