"""What an edit changed, field by field, in words a CAB member compares: the revision diff of the change page.

Reads the before/after that `approvals.services.change_update` writes into each `change.edit` decision record, so
the page and the record always tell the same story. The plan is compared wave by wave; other structured fields
(scope, risk answers) key by key.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from approvals.audit.models import DecisionRecord

# Snapshot keys a person reads, with their labels, in the order the change form shows them.
FIELD_LABELS: dict[str, str] = {
    "title": "Title",
    "change_type": "Change type",
    "template": "Standard change template",
    "justification": "Justification",
    "release": "Release",
    "release_sha256": "Release image (sha256)",
    "rollback_release": "Rollback release",
    "target_scope": "Target scope",
    "scope_devices": "Devices in scope",
    "impact_analysis": "Impact analysis",
    "test_evidence_summary": "Test evidence summary",
    "requested_window": "Requested window",
    "emergency_reason": "Emergency reason",
    "risk_answers": "Risk answers",
    "risk_score": "Risk score",
    "risk_level": "Risk level",
    "risk_raised_by": "Risk raised by",
    "rollout_plan": "Rollout plan",
    "plan_hash": "Plan hash",
}
# Not shown as rows of their own: the revision is the heading, the status has its own records.
_SKIPPED = {"revision", "status"}


@dataclass(frozen=True)
class FieldChange:
    """One line of a revision diff: what, before, after."""

    label: str
    before: str
    after: str


@dataclass(frozen=True)
class RevisionDiff:
    """One edit: the revision it made, who and when, and what changed."""

    record: DecisionRecord
    revision: int
    changes: list[FieldChange]


def _text(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def _keyed(label: str, before: Any, after: Any) -> list[FieldChange]:
    """Dicts compared key by key (scope, risk answers); anything else as a whole."""
    if not (isinstance(before, dict) and isinstance(after, dict)):
        return [FieldChange(label, _text(before), _text(after))]
    keys = sorted(set(before) | set(after))
    return [
        FieldChange(f"{label}: {key}", _text(before.get(key)), _text(after.get(key)))
        for key in keys
        if before.get(key) != after.get(key)
    ]


def _waves(before: Any, after: Any) -> list[FieldChange]:
    """The plan wave by wave (added, removed and changed settings), then its other settings."""
    old = before if isinstance(before, dict) else {}
    new = after if isinstance(after, dict) else {}
    old_waves: list[Any] = old["waves"] if isinstance(old.get("waves"), list) else []
    new_waves: list[Any] = new["waves"] if isinstance(new.get("waves"), list) else []
    changes = []
    for index in range(max(len(old_waves), len(new_waves))):
        was = old_waves[index] if index < len(old_waves) else None
        now = new_waves[index] if index < len(new_waves) else None
        name = (now or was or {}).get("name", "") if isinstance(now or was, dict) else ""
        label = f"Plan, wave {index + 1}" + (f" ({name})" if name else "")
        if was is None or now is None:
            changes.append(
                FieldChange(label, _text(was) if was else "(no such wave)", _text(now) if now else "(removed)")
            )
        elif was != now:
            changes.extend(_keyed(label, was, now))
    rest = sorted((set(old) | set(new)) - {"waves"})
    changes.extend(
        FieldChange(f"Plan: {key}", _text(old.get(key)), _text(new.get(key)))
        for key in rest
        if old.get(key) != new.get(key)
    )
    return changes


def field_changes(before: dict[str, Any], after: dict[str, Any]) -> list[FieldChange]:
    """Every reviewable field that differs between two snapshots, labelled, in form order."""
    keys = [key for key in FIELD_LABELS if key in before or key in after]
    keys += sorted(k for k in set(before) | set(after) if k not in FIELD_LABELS and k not in _SKIPPED)
    changes: list[FieldChange] = []
    for key in keys:
        was, now = before.get(key), after.get(key)
        if was == now:
            continue
        label = FIELD_LABELS.get(key, key.replace("_", " ").capitalize())
        if key == "rollout_plan":
            changes.extend(_waves(was, now))
        elif key in ("target_scope", "risk_answers"):
            changes.extend(_keyed(label, was, now))
        else:
            changes.append(FieldChange(label, _text(was), _text(now)))
    return changes


def revision_diffs(records: Iterable[DecisionRecord]) -> list[RevisionDiff]:
    """The diffs of the `change.edit` records among `records`, newest first."""
    diffs = []
    for record in records:
        if record.action != "change.edit" or not isinstance(record.after, dict):
            continue
        before = record.before if isinstance(record.before, dict) else {}
        diffs.append(RevisionDiff(record, record.revision or 0, field_changes(before, record.after)))
    return sorted(diffs, key=lambda diff: diff.record.seq, reverse=True)
