"""A Celery worker killed (SIGKILL) while it folds a telemetry batch loses nothing: on a real Redis broker with real
`celery worker` processes, the batch is processed by the next worker within a minute and counted exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import OperationalError, connection, transaction
from django.utils import timezone

from devices import telemetry
from devices.models import TelemetryBatch, TelemetrySample
from tests.factories import DeviceFactory
from tests.test_celery_worker import BROKER_URL, _wait_for, redis_queue

REDELIVERY_BUDGET_SECONDS = 60


def _database_url() -> str:
    db = connection.settings_dict
    password = f":{db['PASSWORD']}" if db.get("PASSWORD") else ""
    return f"postgres://{db['USER']}{password}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _start_worker(queue: str, tmp_path: Path, name: str, *extra: str, env: dict[str, str] | None = None):
    environment = {
        **os.environ,
        "DATABASE_URL": _database_url(),
        "CELERY_BROKER_URL": BROKER_URL,
        "CELERY_TASK_DEFAULT_QUEUE": queue,
        "OTA_DATA_DIR": str(settings.DATA_DIR),
        **(env or {}),
    }
    log = (tmp_path / f"{name}.log").open("wb")
    command = [sys.executable, "-m", "celery", "-A", "ota_project", "worker", "--pool", "solo", "--queues", queue]
    command += ["--hostname", f"{name}-{queue}@%h", "--without-gossip", "--without-mingle", "--loglevel", "INFO"]
    # Its own session, so that stopping it stops what it started (the embedded beat) and nothing else.
    return subprocess.Popen(
        [*command, *extra],
        cwd=settings.BASE_DIR,
        env=environment,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _being_processed(batch_pk: int) -> bool:
    """Whether a worker holds the batch's row lock (telemetry_batch_process locks it until it commits)."""
    try:
        with transaction.atomic():
            TelemetryBatch.objects.select_for_update(nowait=True).get(pk=batch_pk)
    except OperationalError:
        return True
    return False


@pytest.fixture
def crash_queue():
    """A queue of its own on the Redis broker, published to from this process."""
    with redis_queue("ota-crash") as queue:
        yield queue


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_worker_was_killed_is_processed_by_the_next_worker_within_a_minute_once(crash_queue, tmp_path):
    slow = _start_worker(
        crash_queue,
        tmp_path,
        "doomed",
        "--include",
        "tests.support.slow_telemetry",
        env={"OTA_TEST_SLOW_SAMPLE_SECONDS": "120"},
    )
    successor = None
    try:
        device = DeviceFactory.create()
        now = timezone.now()
        samples = [{"reported_at": now, "boot_time_s": 38}, {"reported_at": now, "link_kbps": 5100}]
        batch = telemetry.telemetry_batch_accept(device=device, batch_id="crash-1", samples=samples).batch

        assert _wait_for(lambda: _being_processed(batch.pk), timeout=60), (tmp_path / "doomed.log").read_text()
        os.killpg(slow.pid, signal.SIGKILL)
        slow.wait(timeout=10)
        killed_at = time.monotonic()
        assert TelemetryBatch.objects.get(pk=batch.pk).processed_at is None

        # The next worker, with the beat that runs the stale-batch requeue (every 30 s by default).
        successor = _start_worker(
            crash_queue, tmp_path, "successor", "--beat", "--schedule", str(tmp_path / "beat-schedule")
        )
        processed = _wait_for(
            lambda: TelemetryBatch.objects.filter(pk=batch.pk, processed_at__isnull=False).exists(),
            timeout=REDELIVERY_BUDGET_SECONDS + 5,
        )
        waited = time.monotonic() - killed_at
        assert processed and waited < REDELIVERY_BUDGET_SECONDS, (waited, (tmp_path / "successor.log").read_text())
        assert TelemetryBatch.objects.get(pk=batch.pk).stored_count == 2
        assert TelemetrySample.objects.filter(device=device).count() == 2
    finally:
        _stop(slow, signal.SIGKILL)
        if successor is not None:
            _stop(successor)


def _pool_processes(worker_pid: int) -> list[int]:
    children = Path(f"/proc/{worker_pid}/task/{worker_pid}/children").read_text().split()
    return [int(pid) for pid in children]


def _start_held_prefork_worker(queue: str, tmp_path: Path, name: str, gate: Path) -> subprocess.Popen:
    """A prefork worker (the production pool) with one pool process, whose folds wait while `gate` exists (it is
    created here): the test kills the pool process in the middle of a fold, then removes the gate."""
    gate.write_text("")
    return _start_worker(
        queue,
        tmp_path,
        name,
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--include",
        "tests.support.slow_telemetry",
        env={"OTA_TEST_SLOW_WHILE_FILE": str(gate)},
    )


@pytest.mark.django_db(transaction=True)
def test_a_batch_whose_pool_process_was_killed_is_redelivered_at_once_and_counted_once(crash_queue, tmp_path):
    """Prefork (the production pool): the task is acknowledged late and rejected when its process is lost, so the
    broker hands it to the next pool process at once, without waiting for the visibility timeout or the requeue."""
    gate = tmp_path / "hold"
    worker = _start_held_prefork_worker(crash_queue, tmp_path, "prefork", gate)
    try:
        device = DeviceFactory.create()
        now = timezone.now()
        samples = [{"reported_at": now, "boot_time_s": 38}, {"reported_at": now, "link_kbps": 5100}]
        batch = telemetry.telemetry_batch_accept(device=device, batch_id="pool-crash", samples=samples).batch

        assert _wait_for(lambda: _being_processed(batch.pk), timeout=60), (tmp_path / "prefork.log").read_text()
        (pool_process,) = _pool_processes(worker.pid)
        os.kill(pool_process, signal.SIGKILL)
        killed_at = time.monotonic()
        gate.unlink()
        processed = _wait_for(
            lambda: TelemetryBatch.objects.filter(pk=batch.pk, processed_at__isnull=False).exists(), timeout=30
        )
        waited = time.monotonic() - killed_at
        assert processed and waited < 15, (waited, (tmp_path / "prefork.log").read_text())
        assert TelemetryBatch.objects.get(pk=batch.pk).stored_count == 2
        assert TelemetrySample.objects.filter(device=device).count() == 2
    finally:
        _stop(worker)


@pytest.mark.django_db(transaction=True)
def test_batches_folded_together_by_a_killed_pool_process_are_each_counted_once_soon(crash_queue, tmp_path):
    """A task folds the batches waiting with its own (OTA_TELEMETRY_FOLD_BATCHES): when its process dies in the middle
    of such a fold, every batch it had taken is folded again soon (the redelivered message, or the other batches' own
    messages), and each exactly once."""
    device = DeviceFactory.create()
    now = timezone.now()
    batches = [
        telemetry.telemetry_batch_accept(
            device=device, batch_id=f"together-{n}", samples=[{"reported_at": now, "boot_time_s": 30 + n}]
        ).batch
        for n in range(3)
    ]  # queued before any worker runs: the first task takes all three
    gate = tmp_path / "hold"
    worker = _start_held_prefork_worker(crash_queue, tmp_path, "together", gate)
    try:
        held = _wait_for(lambda: all(_being_processed(batch.pk) for batch in batches), timeout=60)
        assert held, (tmp_path / "together.log").read_text()  # one fold holds all three
        (pool_process,) = _pool_processes(worker.pid)
        os.kill(pool_process, signal.SIGKILL)
        killed_at = time.monotonic()
        gate.unlink()
        pks = [batch.pk for batch in batches]
        processed = _wait_for(
            lambda: TelemetryBatch.objects.filter(pk__in=pks, processed_at__isnull=False).count() == len(pks),
            timeout=30,
        )
        waited = time.monotonic() - killed_at
        assert processed and waited < 15, (waited, (tmp_path / "together.log").read_text())
        assert [TelemetryBatch.objects.get(pk=pk).stored_count for pk in pks] == [1, 1, 1]
        stored = TelemetrySample.objects.filter(device=device).order_by("boot_time_s")
        assert list(stored.values_list("boot_time_s", flat=True)) == [30, 31, 32]
    finally:
        _stop(worker)
