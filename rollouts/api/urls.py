"""Rollout endpoints, included under /api/v1/ (namespace `api`); releases are in devices/firmware/api/urls.py."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from rollouts.api import alert_views, kpi_views, rollout_views

router = SimpleRouter()
router.register("rollouts", rollout_views.RolloutViewSet, basename="rollout")
router.register("alerts", alert_views.AlertViewSet, basename="alert")

urlpatterns = [
    *router.urls,
    path("kpis/", kpi_views.KpiView.as_view(), name="kpis"),
]
