"""The alert webhook through a real Celery worker on Redis: a receiver that fails is retried with backoff by Celery
itself (not the sweep) until it answers, and the alert is never held up."""

from __future__ import annotations

import pytest
from django.utils import timezone

from ota_project.alerts.choices import DeliveryStatus
from ota_project.alerts.models import AlertDelivery
from ota_project.alerts.services import raise_alert
from ota_project.alerts.webhook import SIGNATURE_HEADER, webhook_secret, webhook_signature_valid
from ota_project.celery import app as celery_app
from tests.test_celery_worker import _wait_for, redis_worker  # noqa: F401 - the worker fixture


@pytest.mark.django_db(transaction=True)
def test_a_failing_receiver_is_retried_by_the_worker_until_delivered(receiver, redis_worker, settings):  # noqa: F811
    assert celery_app.conf.task_always_eager is False
    settings.OTA_ALERT_WEBHOOK_BACKOFF_SECONDS = 1
    receiver.answers = [503, 500]
    started = timezone.now()
    alert = raise_alert(
        kind="fleet.rollback_rate",
        dedup_key="fleet.rollback_rate:release:1",
        title="Fleet-wide rollback rate 30% on release 1.1.0",
        summary="Rollbacks over the limit.",
        link="/rollouts/1/",
        evidence={"rolled_back": 12},
    )
    assert _wait_for(
        lambda: AlertDelivery.objects.filter(alert=alert, status=DeliveryStatus.DELIVERED).exists(), timeout=30
    )
    delivery = AlertDelivery.objects.get(alert=alert)
    assert delivery.attempts == 3 and len(receiver.received) == 3
    assert delivery.delivered_at is not None
    assert (delivery.delivered_at - started).total_seconds() >= 3  # waited 1 s, then 2 s
    for headers, body in receiver.received:
        assert webhook_signature_valid(webhook_secret(), headers[SIGNATURE_HEADER], body)
