"""Release and rollout endpoints, included under /api/v1/ (namespace `api`)."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from rollouts.api import rollout_views, views

router = SimpleRouter()
router.register("rollouts", rollout_views.RolloutViewSet, basename="rollout")

urlpatterns = [
    path("releases/", views.ReleaseListCreateView.as_view(), name="release-list"),
    path("releases/<int:pk>/", views.ReleaseDetailView.as_view(), name="release-detail"),
    path("releases/<int:pk>/artifact/", views.ReleaseArtifactView.as_view(), name="release-artifact"),
    *router.urls,
]
