"""The Celery app for short side effects (telemetry batches, exports, notifications), configured from settings.

Settings named CELERY_* configure it (e.g. CELERY_BROKER_URL=redis://127.0.0.1:6379/0). With no broker configured
(the embedded `make run`), tasks run eagerly in the process that enqueues them: no external broker is needed.
Workers: `celery -A ota_project worker -l info` (and `celery -A ota_project beat` for the periodic housekeeping).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from celery.schedules import crontab
from celery.signals import task_postrun, task_prerun

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "ota_project.settings")

EMBEDDED_BROKER = "memory://"
# Redis (and SQS) only: a message a worker took but never acknowledged, because the worker died, goes back to the
# queue after this many seconds (kombu's default is an hour). RabbitMQ does not need it: it redelivers as soon as
# the dead worker's connection closes. A task still running when the timeout passes is delivered a second time to
# another worker while the first copy runs, so every task must finish well inside it: the time limits below stop a
# task first (it is then acknowledged as failed, and what it left undone is picked up again by the periodic
# housekeeping), and retry countdowns stay shorter than it (an ETA message waits unacknowledged in its worker).
VISIBILITY_TIMEOUT_SECONDS = int(os.environ.get("CELERY_VISIBILITY_TIMEOUT_SECONDS", "60"))
# How often beat looks for telemetry batches whose task was lost (devices.telemetry.telemetry_requeue_stale).
TELEMETRY_REQUEUE_SECONDS = float(os.environ.get("OTA_TELEMETRY_REQUEUE_SECONDS", "30"))
# How often beat evaluates the fleet-wide rollback and reboot rates (the same variable as settings.py reads).
FLEET_CHECK_SECONDS = float(os.environ.get("OTA_FLEET_CHECK_SECONDS", "60"))


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
        "broker_transport_options": {"visibility_timeout": VISIBILITY_TIMEOUT_SECONDS},
        # Enforced by the prefork pool (the production default), not by the solo pool.
        "task_soft_time_limit": max(1, VISIBILITY_TIMEOUT_SECONDS // 2),
        "task_time_limit": max(2, VISIBILITY_TIMEOUT_SECONDS * 3 // 4),
        "worker_prefetch_multiplier": 1,
        "task_ignore_result": True,
        "task_default_queue": os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "ota"),
        "broker_connection_retry_on_startup": True,
        "timezone": "UTC",
        "beat_schedule": {
            "telemetry-requeue-stale": {
                "task": "devices.telemetry_requeue_stale",
                "schedule": TELEMETRY_REQUEUE_SECONDS,
            },
            "telemetry-purge": {"task": "devices.telemetry_purge", "schedule": crontab(minute=17)},
            # A signed checkpoint of the decision record's head, kept outside the database (when the head moved).
            "audit-checkpoint": {"task": "approvals.audit_checkpoint", "schedule": 60.0},
            "security-events-purge": {"task": "approvals.security_event_purge", "schedule": crontab(hour=3, minute=41)},
            # Alert webhooks whose task was lost or whose backoff outlived a Celery retry.
            "alerts-webhook-sweep": {"task": "alerts.webhook_sweep", "schedule": 30.0},
            # The fleet-wide safety net over every release with running rollouts (rollouts.fleet_safety).
            "fleet-safety-check": {"task": "rollouts.fleet_safety_check", "schedule": FLEET_CHECK_SECONDS},
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


@task_prerun.connect
@task_postrun.connect
def _database_connections_kept_as_django_keeps_them(task: Task | None = None, **_: Any) -> None:
    """Around every task a worker runs, what Django does around every request: close a connection past CONN_MAX_AGE,
    one that saw an error or is unusable, and health-check it at next use. Celery's fixup closes it outright unless
    CELERY_DB_REUSE_MAX is set (settings). Never for an eager task: it runs inside its caller's request or
    transaction."""
    if task is not None and not getattr(task.request, "is_eager", False):
        from django.db import close_old_connections

        close_old_connections()


app.autodiscover_tasks()
