"""History-size part of the rollout-scale benchmark: a 5-wave rollout on a real dev server and worker, the fleet's
outcomes written in bulk between monitoring ticks, events counted over every continue-as-new run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

BULK_SUCCESS_EVERY = 0.5  # seconds between the simulated fleet's bulk outcome writes


def _complete_everything(rollout_id: int) -> None:
    """Every offered or pending update deployment of the rollout succeeds (the fleet's outcomes, in bulk)."""
    from django.db import transaction
    from django.utils import timezone

    from devices.models import Device
    from rollouts.choices import DEPLOYMENT_TERMINAL, DeploymentStatus
    from rollouts.models import Deployment

    with transaction.atomic():
        open_rows = Deployment.objects.filter(rollout_id=rollout_id).exclude(status__in=DEPLOYMENT_TERMINAL)
        device_ids = list(open_rows.values_list("device_id", flat=True))
        open_rows.update(status=DeploymentStatus.SUCCEEDED, finished_at=timezone.now())
        Device.objects.filter(pk__in=device_ids).update(installed_version="2.0.0")


async def _history_events(client: Any, workflow_id: str) -> tuple[int, int, int]:
    """(runs, total events, largest run) across the continue-as-new chain of one workflow id."""
    runs = totals = largest = 0
    async for execution in client.list_workflows(f'WorkflowId = "{workflow_id}"'):
        history = await client.get_workflow_handle(workflow_id, run_id=execution.run_id).fetch_history()
        count = len(history.events)
        runs, totals, largest = runs + 1, totals + count, max(largest, count)
    return runs, totals, largest


def bench_history(devices: int) -> dict[str, Any]:
    from django.conf import settings

    from bench.fleet import build_fleet
    from rollouts import rollout_services as steps
    from rollouts.choices import ROLLOUT_TERMINAL
    from rollouts.models import Rollout
    from tests.temporal_support import DevServer, in_temporal_loop, running_worker
    from workflows.client import temporal_client
    from workflows.search_attributes import ensure_search_attributes

    with tempfile.TemporaryDirectory() as scratch:
        server = DevServer(Path(scratch) / "temporal.db")
        server.start()
        try:
            settings.TEMPORAL_ENABLED = True
            settings.TEMPORAL_ADDRESS = server.address
            settings.TEMPORAL_TASK_QUEUE = f"bench-{devices}"
            client = in_temporal_loop(temporal_client())
            in_temporal_loop(ensure_search_attributes(client))
            fleet = build_fleet(devices, tag=f"h{devices}-{int(time.time())}")
            with running_worker():
                started = time.perf_counter()
                rollout = steps.rollout_start(actor=fleet["operator"], change=fleet["change"])
                while Rollout.objects.get(pk=rollout.pk).status not in ROLLOUT_TERMINAL:
                    _complete_everything(rollout.pk)
                    time.sleep(BULK_SUCCESS_EVERY)
                seconds = time.perf_counter() - started
            runs, events, largest = in_temporal_loop(_history_events(client, rollout.workflow_id))
            final = Rollout.objects.get(pk=rollout.pk)
            return {
                "devices": devices,
                "status": final.status,
                "waves": final.waves.count(),
                "workflow_runs": runs,
                "history_events_total": events,
                "history_events_largest_run": largest,
                "wall_seconds": round(seconds, 1),
            }
        finally:
            server.stop()
