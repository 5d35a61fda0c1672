"""The Celery app for short side effects (telemetry batches, exports, notifications), configured from settings.

Settings named CELERY_* configure it (e.g. CELERY_BROKER_URL=redis://127.0.0.1:6379/0). With no broker configured
(the embedded `make run`), tasks run eagerly in the process that enqueues them: no external broker is needed.
Workers: `celery -A ota_project worker -l info` (and `celery -A ota_project beat` for the periodic housekeeping).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")

EMBEDDED_BROKER = "memory://"


def embedded_defaults() -> dict[str, Any]:
    """Defaults that settings override: eager tasks without a broker URL, safe delivery with one."""
    broker = os.environ.get("CELERY_BROKER_URL", "")
    return {
        "broker_url": broker or EMBEDDED_BROKER,
        "task_always_eager": not broker,
        # Eager errors are logged, not raised into the request that enqueued the task (the batch waits instead).
        "task_eager_propagates": False,
        # At-least-once: a task is acknowledged after it ran; the tasks are idempotent.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "ota"),
        "broker_connection_retry_on_startup": True,
        "timezone": "UTC",
        "beat_schedule": {
            "telemetry-requeue-stale": {"task": "devices.telemetry_requeue_stale", "schedule": 300.0},
            "telemetry-purge": {"task": "devices.telemetry_purge", "schedule": crontab(hour=3, minute=17)},
            "security-events-purge": {"task": "approvals.security_event_purge", "schedule": crontab(hour=3, minute=41)},
            "finished-rollouts-expire-deadlines": {
                "task": "rollouts.finished_rollouts_expire_deadlines",
                "schedule": 300.0,
            },
        },
    }


app = Celery("ota_project")
# Lazily: settings are read when the configuration is first needed, never while Django imports its settings.
app.config_from_object("django.conf:settings", namespace="CELERY")
app.add_defaults(embedded_defaults)
app.autodiscover_tasks()
