"""Imported only by a Celery worker that a crash test starts (`celery worker --include tests.support.slow_telemetry`):
folding a telemetry batch takes OTA_TEST_SLOW_SAMPLE_SECONDS per sample, while the worker holds the batch's row lock,
so the test can kill the worker in the middle of processing."""

from __future__ import annotations

import os
import time

from devices import telemetry

_copy_samples = telemetry._copy_samples


def _slow_copy_samples(rows: str) -> None:
    time.sleep(float(os.environ.get("OTA_TEST_SLOW_SAMPLE_SECONDS", "60")) * rows.count("\n"))
    _copy_samples(rows)


telemetry._copy_samples = _slow_copy_samples
