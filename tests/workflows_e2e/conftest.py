"""Fixtures shared by the end-to-end rollout tests on the real Temporal dev server."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from approvals import services as change_services
from rollouts import rollout_services
from rollouts.models import Rollout


@pytest.fixture
def start(
    temporal_settings: Any, requester: Any, change_fields: Any, cab_member: Any, cab_member_2: Any, operator: Any
) -> Callable[[dict[str, Any]], Rollout]:
    """start(plan) -> a started rollout of an approved change with that plan (workflow started on commit)."""

    def _start(plan: dict[str, Any]) -> Rollout:
        change = change_services.change_create(actor=requester, **{**change_fields, "rollout_plan": plan})
        change = change_services.change_submit(actor=requester, change=change)
        change_services.approval_grant(actor=cab_member, change=change, revision=1)
        change = change_services.approval_grant(actor=cab_member_2, change=change, revision=1)
        return rollout_services.rollout_start(actor=operator, change=change)

    return _start
