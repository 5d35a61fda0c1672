"""Data crossing the Temporal boundary for ChangeWorkflow (stdlib only; see workflows/change.py).

Every payload is a dataclass; times are ISO-8601 UTC strings ("" = none). Names here are part of running
histories: never rename an activity, signal, query or field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CHANGE_WORKFLOW_NAME = "ChangeWorkflow"


def change_workflow_id(change_id: int) -> str:
    """Deterministic workflow id, so starting twice is a no-op."""
    return f"change-{change_id}"


class ChangeActivity:
    """Stable activity names (workflows/change_activities.py implements them).

    CHANGE_SYNC  ChangeRef -> ChangeState  (reads the change; writes nothing)
    CHANGE_FIRE  ChangeRef -> ChangeState  (does whatever the database says is due now: reminders, escalation,
                                            approval expiry, the scheduled start or its hold; each once, by step key)

    Both run only for the change's own workflow (`change-<id>`), and CHANGE_FIRE acts only on what the database
    says is due now (the worker's clock): a forged or early call changes nothing.
    """

    CHANGE_SYNC = "changes.change_sync"
    CHANGE_FIRE = "changes.change_fire"


class ChangeSignal:
    """Services signal this after every decision on the change commits (the payload is a hint, never trusted)."""

    CHANGED = "changed"


class ChangeQuery:
    STATE = "state"


@dataclass
class ChangeRef:
    change_id: int
    due_at: str = ""  # the due time the workflow's timer fired for ("" for a sync)


@dataclass
class ChangeNudge:
    """What a service says changed (for the history's readers; the workflow re-reads the database anyway)."""

    reason: str = ""


@dataclass
class ChangeState:
    """The change as the workflow sees it: what the search attributes show and when the next timer is due."""

    change_id: int
    status: str
    revision: int = 0
    risk_level: str = ""
    change_type: str = ""
    review_due_at: str = ""
    approval_expires_at: str = ""
    scheduled_start: str = ""
    next_due_at: str = ""  # the earliest step still owed ("" = nothing to wait for but people)
    next_due: str = ""  # what is due then (reminder, escalation, expiry, start)
    closed: bool = False  # nothing is owed any more: the workflow ends
    done: list[str] = field(default_factory=list)  # what the last CHANGE_FIRE did (for the history's readers)


@dataclass
class ChangeInput:
    """Workflow input; also the state carried across continue-as-new."""

    change_id: int
