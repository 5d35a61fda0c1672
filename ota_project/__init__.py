"""The project package; the Celery app is loaded with it so that @shared_task binds to it."""

from ota_project.celery import app as celery_app

__all__ = ["celery_app"]
