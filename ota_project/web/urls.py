"""Sign-in, sign-out and the landing page (placeholder until the web foundation lands)."""

from django.contrib.auth import views as auth_views
from django.urls import path

from ota_project import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
]
