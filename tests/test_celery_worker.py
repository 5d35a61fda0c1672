"""Telemetry through a real Celery worker on Redis: the device's batch lands once, whatever the re-sends."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from celery.contrib.testing.worker import start_worker
from rest_framework.test import APIClient

from devices.credentials import device_credential_issue
from devices.models import TelemetryBatch, TelemetrySample
from devices.tasks import telemetry_batch_process_task
from ota_project.celery import app as celery_app
from ota_project.roles import Role
from tests.factories import DeviceFactory, UserFactory

BROKER_URL = os.environ.get("CELERY_TEST_BROKER_URL", "redis://127.0.0.1:6379/0")
TELEMETRY = "/device/v1/telemetry/"


def _fresh_connections() -> None:
    # Eager calls earlier in this process opened the producer pool on the embedded memory:// transport; drop the
    # pools (what Celery itself does after a fork) so the next publish connects to the broker configured now.
    celery_app._after_fork()  # type: ignore[attr-defined]  # private Celery API, absent from celery-types' stubs


def _redis_available() -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(BROKER_URL, socket_connect_timeout=2).ping())
    except redis.RedisError:
        return False


@contextmanager
def redis_queue(prefix: str) -> Iterator[str]:
    """A queue of its own on the Redis broker, published to from this process; the settings come back after."""
    if not _redis_available():
        pytest.fail(f"Redis is needed at {BROKER_URL} (make test starts it)")
    saved = {key: celery_app.conf[key] for key in ("broker_url", "task_always_eager", "task_default_queue")}
    queue = f"{prefix}-{uuid.uuid4().hex[:12]}"
    celery_app.conf.update(broker_url=BROKER_URL, task_always_eager=False, task_default_queue=queue)
    _fresh_connections()
    try:
        yield queue
    finally:
        celery_app.conf.update(saved)
        _fresh_connections()


@pytest.fixture
def redis_worker():
    """An in-process worker (solo pool) consuming a queue of its own on the Redis broker."""
    with redis_queue("ota-test") as queue:
        with start_worker(celery_app, pool="solo", perform_ping_check=False, queues=[queue], shutdown_timeout=20):
            yield queue


def _wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.django_db(transaction=True)
def test_telemetry_batch_is_processed_by_a_real_worker_exactly_once(redis_worker):
    assert celery_app.conf.task_always_eager is False and celery_app.conf.broker_url == BROKER_URL
    device = DeviceFactory.create()
    operator = UserFactory.create(roles=[Role.OPERATOR])
    client = APIClient()
    client.credentials(
        HTTP_AUTHORIZATION=f"Device {device.serial}:{device_credential_issue(actor=operator, device=device)}"
    )
    body = {
        "batch_id": "boot-2026-01-05-1",
        "samples": [
            {"reported_at": "2026-01-05T10:00:00Z", "boot_time_s": 38, "gps_fix_s": 22},
            {"reported_at": "2026-01-05T10:05:00Z", "link_kbps": 5100},
        ],
    }
    response = client.post(TELEMETRY, body, format="json")
    assert response.status_code == 202 and response.json()["duplicate"] is False
    batch = TelemetryBatch.objects.get(device=device)
    assert _wait_for(lambda: TelemetryBatch.objects.filter(pk=batch.pk, processed_at__isnull=False).exists())
    assert sorted(TelemetrySample.objects.filter(device=device).values_list("reported_at__minute", flat=True)) == [0, 5]

    # The response was lost: the device sends the same batch again; and the broker delivers a message twice.
    again = client.post(TELEMETRY, body, format="json")
    assert again.status_code == 202 and again.json()["duplicate"] is True
    telemetry_batch_process_task.delay(batch.pk)
    marker = client.post(
        TELEMETRY,
        {"batch_id": "marker", "samples": [{"reported_at": "2026-01-05T11:00:00Z", "boot_time_s": 1}]},
        format="json",
    )
    assert marker.status_code == 202
    # The worker handles messages in order (solo pool): once the marker landed, the redelivery has run too.
    assert _wait_for(lambda: TelemetrySample.objects.filter(device=device, boot_time_s=1).exists())
    assert TelemetrySample.objects.filter(device=device).count() == 3
    assert TelemetryBatch.objects.filter(device=device).count() == 2
