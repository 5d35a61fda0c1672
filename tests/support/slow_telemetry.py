"""Imported only by a Celery worker that a crash test starts (`celery worker --include tests.support.slow_telemetry`):
folding a telemetry batch takes OTA_TEST_SLOW_SAMPLE_SECONDS per sample, while the worker holds the batch's row lock,
so the test can kill the worker in the middle of processing."""

from __future__ import annotations

import os
import time
from typing import Any

from devices import telemetry

_sample_row = telemetry._sample_row


def _slow_sample_row(device_id: int, sample: dict[str, Any]) -> Any:
    time.sleep(float(os.environ.get("OTA_TEST_SLOW_SAMPLE_SECONDS", "60")))
    return _sample_row(device_id, sample)


telemetry._sample_row = _slow_sample_row
