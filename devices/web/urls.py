"""Fleet pages under /fleet/ (namespace web-fleet)."""

from django.urls import path

from devices.web import views

urlpatterns = [
    path("", views.inventory, name="inventory"),
    path("devices/<str:serial>/", views.device_detail, name="device"),
    path("devices/<str:serial>/release/", views.device_release, name="release"),
]
