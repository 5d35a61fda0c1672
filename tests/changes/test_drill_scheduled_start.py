"""`fleet_drill --scheduled-start-seconds N`: the drill schedules its change N seconds ahead and the change's
timer (ChangeWorkflow on the drill's worker) starts the rollout, which then runs to the end as usual."""

from __future__ import annotations

import pytest
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from rollouts.drill.run import DrillError, DrillOptions, run_drill, validate_options
from rollouts.models import Rollout

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_drill_change_is_started_by_its_timer(temporal_settings, temporal_dev_server):
    before = timezone.now()
    report = run_drill(
        DrillOptions(
            scenario="healthy",
            devices=12,
            seed=5,
            web_processes=1,
            temporal_address=temporal_dev_server.address,
            timeout_seconds=180,
            scheduled_start_seconds=5,
        )
    )
    assert report["rollout_status"] == "completed" and report["checks_passed"] is True
    rollout = Rollout.objects.get(pk=report["rollout_id"]) if "rollout_id" in report else Rollout.objects.latest("pk")
    assert (rollout.created_at - before).total_seconds() >= 5  # not before its time
    assert DecisionRecord.objects.filter(
        object_type="rollout", object_id=str(rollout.pk), action="rollout.scheduled_start"
    ).exists()


@pytest.mark.parametrize("seconds", [0, 3601])
def test_the_scheduled_start_option_is_bounded(seconds):
    with pytest.raises(DrillError, match="--scheduled-start-seconds"):
        validate_options(DrillOptions(scenario="healthy", devices=12, scheduled_start_seconds=seconds))
