"""The one guarded way to move deployments and waves between statuses (the tables are in rollouts.choices).

Each helper is a conditional UPDATE on the current statuses its table allows to reach the target: a row that a
concurrent transaction moved elsewhere first no longer matches and stays where that transaction put it (the
caller sees it in the count), and a row already in the target status is left untouched, so a retried activity
changes nothing. Callers run inside their service's transaction and record their decision there: these helpers
move bulk rows (a wave's deployments, a rollout's waves) and write no decision record of their own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, TypeVar

from django.db.models import Model, QuerySet

from rollouts.choices import (
    DEPLOYMENT_TERMINAL,
    DEPLOYMENT_TRANSITIONS,
    WAVE_TRANSITIONS,
    DeploymentStatus,
    WaveStatus,
)
from rollouts.models import Deployment, Wave

M = TypeVar("M", bound=Model)


def transition_sources(table: Mapping[str, frozenset[str]], to: str) -> frozenset[str]:
    """The statuses from which `table` allows a move to `to` (never `to` itself: staying put is not a move)."""
    if to not in table:
        raise ValueError(f"{to!r} is not a status of this table.")
    return frozenset(status for status, targets in table.items() if to in targets and status != to)


def _rows(model: type[M], rows: QuerySet[M] | Iterable[int]) -> QuerySet[M]:
    if isinstance(rows, QuerySet):
        return rows
    return model._default_manager.filter(pk__in=list(rows))


def deployment_transition(
    *,
    deployments: QuerySet[Deployment] | Iterable[int],
    to: DeploymentStatus | str,
    now: datetime,
    reason: str | None = None,
    **fields: Any,
) -> int:
    """Move these deployments to `to` where DEPLOYMENT_TRANSITIONS allows it; returns how many rows moved.

    Sets `updated_at` (and `finished_at` on an ending status) to `now`; `reason`, when given, becomes the
    deployment's `detail`; `fields` are further columns written with the move (deadline, failure class, ...).
    """
    sources = transition_sources(DEPLOYMENT_TRANSITIONS, to)
    values: dict[str, Any] = {"status": to, "updated_at": now}
    if to in DEPLOYMENT_TERMINAL:
        values["finished_at"] = now
    if reason is not None:
        values["detail"] = reason[:500]
    values.update(fields)
    return _rows(Deployment, deployments).filter(status__in=sources).update(**values)


def wave_transition(*, waves: QuerySet[Wave] | Iterable[int], to: WaveStatus | str, **fields: Any) -> int:
    """Move these waves to `to` where WAVE_TRANSITIONS allows it; returns how many rows moved.

    `fields` are further columns written with the move (started_at, verdict_at, assigned_devices).
    """
    sources = transition_sources(WAVE_TRANSITIONS, to)
    return _rows(Wave, waves).filter(status__in=sources).update(status=to, **fields)
