"""Change request pages (namespace web-changes): queue, create, detail, edit, live preview and actions."""

from django.urls import path

from approvals.web import change_views as views

urlpatterns = [
    path("", views.queue, name="queue"),
    path("new/", views.create, name="create"),
    path("preview/", views.preview, name="preview"),
    path("<int:pk>/", views.detail, name="detail"),
    path("<int:pk>/edit/", views.edit, name="edit"),
    path("<int:pk>/decide/", views.decide, name="decide"),
    path("<int:pk>/submit/", views.submit, name="submit"),
    path("<int:pk>/cancel/", views.cancel, name="cancel"),
    path("<int:pk>/schedule/", views.schedule, name="schedule"),
    path("<int:pk>/evidence/", views.evidence_upload, name="evidence"),
    path("<int:pk>/retrospective/", views.retrospective, name="retrospective"),
    path("<int:pk>/post-review/", views.post_review, name="post-review"),
]
