"""Alert pages (namespace web-alerts), mounted at /alerts/."""

from django.urls import path

from rollouts.web import alert_views

urlpatterns = [
    path("", alert_views.alert_list, name="list"),
    path("<int:pk>/", alert_views.alert_detail, name="detail"),
    path("<int:pk>/acknowledge/", alert_views.alert_acknowledge, name="acknowledge"),
    path("<int:pk>/resolve/", alert_views.alert_resolve, name="resolve"),
]
