"""/metrics at the root of the site (included by ota_project.urls), where Prometheus looks by default."""

from django.urls import path

from rollouts.metrics import metrics

urlpatterns = [
    path("metrics", metrics, name="metrics"),
]
