"""A change freeze that begins while a rollout runs, on the real Temporal dev server with the real workflow and
activities: the wave that runs finishes its soak, the next one waits at its gate while the freeze lasts (the live
status says why; nothing is assigned), and opens once the freeze has ended."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from approvals.models import ChangeFreeze
from ota_project.roles import Role
from rollouts.choices import RolloutStatus
from rollouts.models import Deployment, Rollout, Wave
from tests.fleet_driver import finished, healthy, run_until
from tests.temporal_support import running_worker, wait_until
from tests.workflows_e2e.test_rollout_e2e import fast_plan
from workflows.client import query_rollout_status

pytestmark = pytest.mark.django_db(transaction=True)


def _live_message(rollout_id: int) -> str:
    status = query_rollout_status(rollout_id)
    return status.message if status is not None else ""


def test_a_freeze_that_begins_during_a_rollout_holds_its_next_wave_until_it_ends(start: Any, make_user: Any):
    plan = fast_plan()
    plan["waves"][0]["soak_seconds"] = 8  # the freeze is declared while the pilot soaks
    owner = make_user(Role.CAB_MEMBER, username="fred-freeze")
    with running_worker():
        rollout = start(plan)
        pilot_done = lambda r: Deployment.objects.filter(rollout=r, wave__index=0, status="succeeded").count() == 2  # noqa: E731
        rollout = run_until(rollout.pk, healthy, pilot_done)
        assert not Deployment.objects.filter(rollout=rollout, wave__index=1).exists()
        now = timezone.now()
        freeze = ChangeFreeze.objects.create(
            reason="Holiday peak",
            starts_at=now - timedelta(minutes=1),
            ends_at=now + timedelta(seconds=20),
            owner=owner,
        )

        # The pilot passes its soak; the fleet wave waits for the freeze (a running rollout, not paused or halted).
        wait_until(lambda: "Holiday peak" in _live_message(rollout.pk), 40, "the fleet wave to wait for the freeze")
        assert "allowed window" in _live_message(rollout.pk)
        assert Wave.objects.get(rollout=rollout, index=0).status in ("passed", "promoted")
        assert not Deployment.objects.filter(rollout=rollout, wave__index=1).exists()
        assert Rollout.objects.get(pk=rollout.pk).status == RolloutStatus.RUNNING

        rollout = run_until(rollout.pk, healthy, finished, timeout=120)
    assert rollout.status == RolloutStatus.COMPLETED
    fleet = Deployment.objects.filter(rollout=rollout, wave__index=1)
    assert fleet.exists() and all(deployment.created_at >= freeze.ends_at for deployment in fleet)
