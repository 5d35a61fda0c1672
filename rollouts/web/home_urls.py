"""The "needs you now" home: the page (/, URL name `home`) and its live fragment."""

from django.urls import path

from rollouts.web import home_views

urlpatterns = [
    path("", home_views.home, name="home"),
    path("home/live/", home_views.home_live, name="home-live"),
]
