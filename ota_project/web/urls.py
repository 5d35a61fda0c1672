"""Sign-in and sign-out (the landing page, `home`, is rollouts.web.home_urls: it reads every app)."""

from django.urls import path

from ota_project.web import views

urlpatterns = [
    path("login/", views.SignInView.as_view(), name="login"),
    path("logout/", views.SignOutView.as_view(), name="logout"),
]
