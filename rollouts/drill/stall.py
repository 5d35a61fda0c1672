"""A drill-only fault hook for the Temporal worker: stall one named activity before it runs.

Used only by the drill's own worker entry point (`python -m rollouts.drill.worker`), never by the production
worker: it lets a chaos scenario catch the worker *inside* a given step (e.g. the halt) and SIGKILL it there. The
first attempt of the activity announces itself by writing a mark file (the drill watches for it), then sleeps;
later attempts (the retry after the kill) run at once, so the restarted worker does the step for real.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio import client as temporal_client
from temporalio import worker as temporal_worker


class StallActivity(temporal_client.Interceptor, temporal_worker.Interceptor):
    """Sleep `seconds` before the first attempt of `activity_type`, after writing `mark` (JSON: what and when).

    A client interceptor that is also a worker interceptor: a worker built on a client carrying it uses it."""

    def __init__(self, activity_type: str, seconds: float, mark: Path):
        self.activity_type = activity_type
        self.seconds = seconds
        self.mark = mark

    def intercept_activity(
        self, next: temporal_worker.ActivityInboundInterceptor
    ) -> temporal_worker.ActivityInboundInterceptor:
        return _StallInbound(next, self)


class _StallInbound(temporal_worker.ActivityInboundInterceptor):
    def __init__(self, next: temporal_worker.ActivityInboundInterceptor, stall: StallActivity):
        super().__init__(next)
        self.stall = stall

    async def execute_activity(self, input: temporal_worker.ExecuteActivityInput) -> Any:
        info = activity.info()
        if info.activity_type == self.stall.activity_type and info.attempt == 1:
            self.stall.mark.write_text(
                json.dumps(
                    {
                        "activity": info.activity_type,
                        "workflow_id": info.workflow_id,
                        "attempt": info.attempt,
                        "stalled_at": time.time(),
                        "seconds": self.stall.seconds,
                    }
                )
            )
            await asyncio.sleep(self.stall.seconds)
        return await self.next.execute_activity(input)
