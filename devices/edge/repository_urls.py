"""The image repository's static tree, public like the CDN in front of it in production; the project mounts it at
/repository/image/ (outside the device API: no credential, nothing but files)."""

from django.urls import path

from devices.edge import trust_views

urlpatterns = [
    path("<path:path>", trust_views.image_repository_file, name="image-repository-file"),
]
