"""Reading decision records in tests."""

from __future__ import annotations

from typing import Any

from approvals.audit.models import DecisionRecord


def after_state(record: DecisionRecord) -> Any:
    """The record's `after` state (a JSON value), for a test that expects the decision to have recorded one: fails
    the test, naming the record, when it has none."""
    assert record.after is not None, f"{record} recorded no after state"
    return record.after
