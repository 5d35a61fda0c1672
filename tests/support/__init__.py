"""Helpers that run outside the test process (e.g. imported by a Celery worker a test starts)."""
