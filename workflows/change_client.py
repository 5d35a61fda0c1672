"""Start and signal a change's ChangeWorkflow (`change-<pk>`) from the services, after their decision commits.

One call does both: `signal_with_start` starts the workflow when none runs (the first submission, a change whose
workflow ended, one whose start was lost while Temporal was down) and delivers the `changed` signal, which makes the
workflow re-read the change. The database is the truth: when Temporal does not answer, the decision stands and
`changes_workflows_ensure` (the worker's reconcile loop) starts what is missing later.
"""

from __future__ import annotations

import logging

from django.conf import settings
from temporalio.common import (
    SearchAttributePair,
    TypedSearchAttributes,
    WorkflowIDConflictPolicy,
    WorkflowIDReusePolicy,
)
from temporalio.service import RPCError

from workflows.change_types import CHANGE_WORKFLOW_NAME, ChangeInput, ChangeNudge, ChangeSignal, change_workflow_id
from workflows.client import (
    _UNAVAILABLE,
    RPC_TIMEOUT,
    TemporalUnavailable,
    _client_or_unavailable,
    _sync_timeout,
    run_sync,
)
from workflows.search_attributes import OTA_CHANGE_ID, OTA_CHANGE_STATUS

logger = logging.getLogger(__name__)


async def anudge_change_workflow(change_id: int, reason: str, *, status: str, signal: bool = True) -> None:
    """Start the change's workflow if none runs; with `signal`, also tell it that the change changed.

    A new run starts with the change's id and status as search attributes (the workflow keeps them current)."""
    client = await _client_or_unavailable()
    try:
        await client.start_workflow(
            CHANGE_WORKFLOW_NAME,
            ChangeInput(change_id=change_id),
            id=change_workflow_id(change_id),
            task_queue=settings.TEMPORAL_TASK_QUEUE,
            # Running: signal that run (USE_EXISTING). Closed: a new run may start (the change was closed and its
            # workflow ended; the new run reads the change, shows its final state and ends again).
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
            start_signal=ChangeSignal.CHANGED if signal else None,
            start_signal_args=[ChangeNudge(reason=reason)] if signal else [],
            static_summary=f"Change {change_id}",
            search_attributes=TypedSearchAttributes(
                [SearchAttributePair(OTA_CHANGE_ID, change_id), SearchAttributePair(OTA_CHANGE_STATUS, status)]
            ),
            rpc_timeout=RPC_TIMEOUT,
        )
    except RPCError as err:
        if err.status in _UNAVAILABLE:
            raise TemporalUnavailable(f"Temporal did not answer: {err.message}") from err
        raise


def nudge_change_workflow(change_id: int, reason: str, *, status: str, signal: bool = True) -> bool:
    """Sync `anudge_change_workflow` for `transaction.on_commit`; False (logged) when Temporal did not answer."""
    if not settings.TEMPORAL_ENABLED:
        return False
    try:
        run_sync(anudge_change_workflow(change_id, reason, status=status, signal=signal), _sync_timeout(RPC_TIMEOUT))
    except (TemporalUnavailable, RPCError) as err:
        # The decision is committed and stands; the reconcile loop starts the workflow once Temporal answers.
        logger.warning(
            "change %s: workflow not reached after %s (%s); the reconcile loop catches up", change_id, reason, err
        )
        return False
    return True
