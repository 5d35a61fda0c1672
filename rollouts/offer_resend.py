"""Until when a live offer may be re-sent without asking the database again (devices.edge.quiet remembers it).

deployment_offer re-sends an OFFERED deployment as long as nothing withdrew it; what can withdraw or change it is
watched by the database's `offer` epoch (rollouts migration 0014), except time. Time ends a remembered offer here:
at the deployment's deadline, when its stored director metadata stops being reused (director.py signs new metadata
then), and never at all in a region the plan gives maintenance windows (an offer there is always re-sent through the
database, so an opening or a closing never meets a remembered answer).
"""

from __future__ import annotations

from datetime import datetime

from rollouts.choices import DeploymentStatus
from rollouts.director import director_targets_fresh_until
from rollouts.models import Deployment


def offer_resend_until(deployment: Deployment, *, director: bool) -> datetime | None:
    """When a re-send of this offer (as deployment_offer just returned it) must ask the database again; None: now.

    `director`: whether the offer carries director metadata (then its reuse ends the remembered offer too)."""
    if deployment.status != DeploymentStatus.OFFERED or deployment.deadline_at is None:
        return None
    if deployment.rollout.approved_plan.windows_for(deployment.device.region.code) is not None:
        return None
    until = deployment.deadline_at
    if director:
        fresh = director_targets_fresh_until(deployment)
        if fresh is None:
            return None
        until = min(until, fresh)
    return until
