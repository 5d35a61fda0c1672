"""Placeholder URL names (replaced by the pages of this module)."""

from django.urls import path
from django.views.generic import TemplateView

_placeholder = TemplateView.as_view(template_name="base.html")

urlpatterns = [
    path("changes/<int:pk>/trace/", _placeholder, name="change-trace"),
    path("vehicles/<str:serial>/", _placeholder, name="vehicle-register"),
]
