"""Placeholder URL names (replaced by the pages of this module)."""

from django.urls import path
from django.views.generic import TemplateView

_placeholder = TemplateView.as_view(template_name="base.html")

urlpatterns = [
    path("", _placeholder, name="list"),
    path("<int:pk>/", _placeholder, name="detail"),
    path("kpis/", _placeholder, name="kpis"),
]
