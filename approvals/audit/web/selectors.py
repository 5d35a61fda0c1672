"""Page-level reads for the audit pages: filtered decision records, filter options, a timed chain verification."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from django.db.models import QuerySet
from django.http import Http404
from django.utils import timezone

from approvals.audit.api.filters import DecisionRecordFilter
from approvals.audit.checkpoints import checkpoint_after_verify
from approvals.audit.export import MAX_SEQ
from approvals.audit.models import DecisionRecord
from approvals.audit.records import record_hash


def audit_record_list(**filters: Any) -> QuerySet[DecisionRecord]:
    """Decision records matching every given filter (action, actor, object_type, object_id, since, until), newest
    first: the same filter set as /api/v1/audit/records/, so the page and the API never disagree."""
    params = {
        key: value.isoformat() if isinstance(value, datetime) else value for key, value in filters.items() if value
    }
    return DecisionRecordFilter(params, queryset=DecisionRecord.objects.all()).qs.order_by("-seq")


def audit_record_get(*, seq: int) -> DecisionRecord:
    """One record by its position in the chain; Http404 when there is none."""
    # The URL converter takes any number of digits; beyond the column's range there is no record to find.
    record = DecisionRecord.objects.filter(seq=seq).first() if 0 < seq <= MAX_SEQ else None
    if record is None:
        raise Http404("No decision record with this number.")
    return record


def audit_record_neighbours(record: DecisionRecord) -> tuple[int | None, int | None]:
    """The seq of the records before and after this one in the chain (None at either end)."""
    previous = DecisionRecord.objects.filter(seq__lt=record.seq).order_by("-seq").values_list("seq", flat=True).first()
    following = DecisionRecord.objects.filter(seq__gt=record.seq).order_by("seq").values_list("seq", flat=True).first()
    return previous, following


def audit_record_hash_matches(record: DecisionRecord) -> bool:
    """True when the record's stored hash is the sha256 of its content (its own integrity, not the chain's)."""
    return record_hash(record) == record.hash


def audit_action_list() -> list[str]:
    """Every action that occurs in the record, alphabetically (the choices of the action filter)."""
    return list(DecisionRecord.objects.order_by("action").values_list("action", flat=True).distinct())


def audit_object_type_list() -> list[str]:
    """Every object type that occurs in the record, alphabetically."""
    return list(DecisionRecord.objects.order_by("object_type").values_list("object_type", flat=True).distinct())


@dataclass(frozen=True)
class ChainStatus:
    """A chain verification as the audit page shows it: the verdict, when it ran and how long it took."""

    ok: bool
    length: int
    broken_seq: int | None
    problem: str
    head_hash: str
    seconds: float
    checked_at: str
    checkpoints: int = 0
    checkpoint_seq: int | None = None
    unsigned_legacy: int = 0
    problems: tuple[str, ...] = ()

    def as_session(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_session(cls, data: Any) -> ChainStatus | None:
        """The status kept in the session, or None when there is none (or it has an unexpected shape)."""
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{**data, "problems": tuple(data.get("problems", ()))})
        except TypeError:
            return None

    @property
    def checked_at_datetime(self) -> datetime | None:
        try:
            return datetime.fromisoformat(self.checked_at)
        except ValueError:
            return None


def audit_chain_status() -> ChainStatus:
    """Walk the whole chain against signatures and signed checkpoints, sign a checkpoint if intact, time it."""
    started = time.monotonic()
    verdict, _ = checkpoint_after_verify()
    return ChainStatus(
        ok=verdict.ok,
        length=verdict.length,
        broken_seq=verdict.broken_seq,
        problem=verdict.problem,
        head_hash=verdict.head_hash,
        seconds=round(time.monotonic() - started, 3),
        checked_at=timezone.now().isoformat(),
        checkpoints=verdict.checkpoints,
        checkpoint_seq=verdict.checkpoint_seq,
        unsigned_legacy=verdict.unsigned_legacy,
        problems=verdict.problems,
    )
