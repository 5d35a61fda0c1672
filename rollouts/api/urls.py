"""Rollout endpoints, included under /api/v1/ (namespace `api`); releases are in devices/firmware/api/urls.py."""

from rest_framework.routers import SimpleRouter

from rollouts.api import rollout_views

router = SimpleRouter()
router.register("rollouts", rollout_views.RolloutViewSet, basename="rollout")

urlpatterns = [
    *router.urls,
]
