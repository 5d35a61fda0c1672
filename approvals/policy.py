"""Approval policy evaluation: do the valid approvals fill every required role slot with distinct people?

Pure functions over plain data. One person fills at most one slot even when they hold several roles, and the
author fills none; among the possible assignments the best one is found by bipartite matching.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ROLE_LABELS = {
    "cab_member": "CAB",
    "cab_chair": "CAB chair",
    "emergency_cab": "emergency CAB",
    "security_officer": "security officer",
    "requester": "requester",
    "operator": "operator",
    "auditor": "auditor",
}


@dataclass(frozen=True)
class Vote:
    """An approval that may count: who gave it and the roles they held when deciding."""

    approver_id: int
    roles: frozenset[str]


@dataclass(frozen=True)
class PolicyProgress:
    """How far the approvals are from satisfying the policy, per role."""

    required: dict[str, int]
    filled: dict[str, list[int]] = field(default_factory=dict)

    @property
    def missing(self) -> dict[str, int]:
        return {
            role: n - len(self.filled.get(role, []))
            for role, n in self.required.items()
            if n > len(self.filled.get(role, []))
        }

    @property
    def satisfied(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        """E.g. "1 of 2 CAB, security officer pending"."""
        parts = []
        for role, needed in sorted(self.required.items()):
            have = len(self.filled.get(role, []))
            label = ROLE_LABELS.get(role, role)
            if needed == 1:
                parts.append(f"{label} {'approved' if have else 'pending'}")
            else:
                parts.append(f"{have} of {needed} {label}")
        return ", ".join(parts) if parts else "no approvals required"


def policy_progress(required: Mapping[str, int], votes: Iterable[Vote], *, author_id: int) -> PolicyProgress:
    """Assign approvers to role slots (maximum matching); the author and repeat votes never count."""
    slots = [role for role, count in sorted(required.items()) for _ in range(count)]
    voters: dict[int, frozenset[str]] = {}
    for vote in votes:
        if vote.approver_id != author_id and vote.approver_id not in voters:
            voters[vote.approver_id] = vote.roles
    slot_owner: dict[int, int] = {}

    def assign(voter: int, seen: set[int]) -> bool:
        for index, role in enumerate(slots):
            if role in voters[voter] and index not in seen:
                seen.add(index)
                if index not in slot_owner or assign(slot_owner[index], seen):
                    slot_owner[index] = voter
                    return True
        return False

    for voter in sorted(voters):
        assign(voter, set())
    filled: dict[str, list[int]] = {}
    for index, voter in sorted(slot_owner.items()):
        filled.setdefault(slots[index], []).append(voter)
    return PolicyProgress(required=dict(required), filled=filled)
