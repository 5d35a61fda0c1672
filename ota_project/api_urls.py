"""Project-wide API endpoints: who am I, and token issue for API clients."""

from django.urls import path

from ota_project import api_views

urlpatterns = [
    path("me/", api_views.MeView.as_view(), name="me"),
    path("auth/token/", api_views.TokenIssueView.as_view(), name="auth-token"),
]
