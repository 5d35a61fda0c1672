"""Sign-in, sign-out and the landing page."""

from django.urls import path

from ota_project.web import views

urlpatterns = [
    path("", views.home, name="home"),
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", views.SignOutView.as_view(), name="logout"),
]
