"""The short paths' body validators (devices.edge.serializers): each validates with its own serializer, one reused
per thread, and refuses what its serializer refuses (the full path then answers the 400)."""

from __future__ import annotations

import threading

from devices.edge.serializers import checkin_input_valid, telemetry_input_valid
from tests.device_api.conftest import checkin_body

TELEMETRY = {"batch_id": "b-1", "samples": [{"reported_at": "2026-01-05T10:00:00Z", "boot_time_s": 40}]}


def _validate_alternately() -> list[object]:
    seen: list[object] = []
    for _ in range(2):  # the reused serializers, each kind after the other
        checkin, telemetry = checkin_input_valid(checkin_body()), telemetry_input_valid(TELEMETRY)
        assert checkin is not None and telemetry is not None
        seen += [checkin["active_slot"], checkin["boot_count"], telemetry["batch_id"], len(telemetry["samples"])]
        seen += [checkin_input_valid(TELEMETRY), telemetry_input_valid(checkin_body())]
    return seen


def test_each_validator_keeps_its_own_serializer_in_every_thread():
    expected = ["a", 12, "b-1", 1, None, None] * 2
    assert _validate_alternately() == expected
    other: list[object] = []
    thread = threading.Thread(target=lambda: other.extend(_validate_alternately()))
    thread.start()
    thread.join()
    assert other == expected
