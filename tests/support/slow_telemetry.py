"""Imported only by a Celery worker that a crash test starts (`celery worker --include tests.support.slow_telemetry`):
folding a telemetry batch takes OTA_TEST_SLOW_SAMPLE_SECONDS per sample, or waits while the file named by
OTA_TEST_SLOW_WHILE_FILE exists, holding the batch's row lock, so the test can kill the worker in the middle."""

from __future__ import annotations

import os
import time

from devices import telemetry

_copy_samples = telemetry._copy_samples


def _slow_copy_samples(rows: str) -> None:
    gate = os.environ.get("OTA_TEST_SLOW_WHILE_FILE")
    if gate:
        while os.path.exists(gate):
            time.sleep(0.05)
    else:
        time.sleep(float(os.environ.get("OTA_TEST_SLOW_SAMPLE_SECONDS", "60")) * rows.count("\n"))
    _copy_samples(rows)


telemetry._copy_samples = _slow_copy_samples
