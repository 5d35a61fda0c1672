"""Placeholder URL names (replaced by the pages of this module)."""

from django.urls import path
from django.views.generic import TemplateView

_placeholder = TemplateView.as_view(template_name="base.html")

urlpatterns = [
    path("", _placeholder, name="queue"),
    path("new/", _placeholder, name="create"),
    path("<int:pk>/", _placeholder, name="detail"),
]
