"""Rollout pages (namespace web-rollouts): list, start, live dashboard with its fragment and actions, KPIs."""

from django.urls import path

from rollouts.web import kpi_views, start_views, views

urlpatterns = [
    path("", views.rollout_list, name="list"),
    path("start/", start_views.rollout_start, name="start"),
    path("kpis/", kpi_views.rollout_kpis, name="kpis"),
    path("<int:pk>/", views.rollout_detail, name="detail"),
    path("<int:pk>/live/", views.rollout_live, name="live"),
    path("<int:pk>/actions/<str:action>/", views.rollout_act, name="act"),
]
