"""Reads of the security events for the auditors' API and page: the latest rows and counts per kind."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from approvals.audit.choices import SECURITY_SEVERITY, SecurityEventKind, SecuritySeverity
from approvals.audit.models import SecurityEvent

DAY = timedelta(hours=24)
WEEK = timedelta(days=7)


@dataclass(frozen=True)
class KindCount:
    """Refusals of one kind counted over the last 24 hours and the last 7 days."""

    kind: str
    label: str
    severity: str
    last_24h: int
    last_7d: int


def security_event_list() -> QuerySet[SecurityEvent]:
    """All security event rows, the most recently refused first (nothing to scope: auditors see all of them)."""
    return SecurityEvent.objects.order_by("-last_at", "-id")


def security_event_summary(*, now: datetime | None = None) -> list[KindCount]:
    """Every kind with its refusals counted over the last 24 h and 7 days (by the row's latest refusal), kinds
    with refusals first, most severe first."""
    now = now or timezone.now()
    totals = {
        row["kind"]: row
        for row in SecurityEvent.objects.filter(last_at__gte=now - WEEK)
        .values("kind")
        .annotate(week=Sum("count"), day=Sum("count", filter=Q(last_at__gte=now - DAY)))
    }
    rank = {SecuritySeverity.HIGH: 0, SecuritySeverity.MEDIUM: 1, SecuritySeverity.LOW: 2}
    counts = [
        KindCount(
            kind=kind,
            label=str(label),
            severity=SECURITY_SEVERITY[kind],
            last_24h=int(totals.get(kind, {}).get("day") or 0),
            last_7d=int(totals.get(kind, {}).get("week") or 0),
        )
        for kind, label in SecurityEventKind.choices
    ]
    return sorted(counts, key=lambda c: (c.last_7d == 0, rank[SecuritySeverity(c.severity)], -c.last_24h, c.kind))
