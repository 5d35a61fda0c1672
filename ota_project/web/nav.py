"""The role-aware main navigation: which sections a person sees and which one they are in."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from django.http import HttpRequest
from django.urls import reverse

from ota_project.alerts.choices import ALERT_READ_ROLES
from ota_project.alerts.selectors import open_alert_count
from ota_project.roles import APPROVER_ROLES, CHANGE_READER_ROLES, FINDING_READER_ROLES, Role, roles_of


@dataclass(frozen=True)
class NavItem:
    """One link of the main navigation."""

    label: str
    url: str
    current: bool = False
    badge: int | None = None  # a count shown next to the label (open alerts)


def _sections(roles: frozenset[str]) -> list[tuple[str, str]]:
    """(label, url) of every section the holder of `roles` may use, in display order."""
    items: list[tuple[str, str]] = []
    if not roles:
        return items
    items.append(("Overview", reverse("home")))
    if Role.REQUESTER in roles:
        items.append(("My changes", reverse("web-changes:queue") + "?mine=1"))
        items.append(("New change", reverse("web-changes:create")))
    if roles & APPROVER_ROLES:
        items.append(("CAB queue", reverse("web-changes:queue")))
    elif roles & CHANGE_READER_ROLES:
        items.append(("Changes", reverse("web-changes:queue")))
    if roles & {Role.OPERATOR, Role.AUDITOR}:
        items.append(("Rollouts", reverse("web-rollouts:list")))
    items.append(("Fleet", reverse("web-fleet:inventory")))
    items.append(("KPIs", reverse("web-rollouts:kpis")))
    if roles & FINDING_READER_ROLES:
        items.append(("Findings", reverse("web-audit:findings")))
    if roles & ALERT_READ_ROLES:
        items.append(("Alerts", reverse("web-alerts:list")))
    if roles & {Role.AUDITOR, Role.SECURITY_OFFICER}:
        items.append(("Audit", reverse("web-audit:records")))
        items.append(("Security", reverse("web-audit:security")))
    return items


def _match_score(request: HttpRequest, url: str) -> tuple[int, int] | None:
    """How well `url` names the section of the current request (None: not at all); higher wins."""
    parts = urlsplit(url)
    path = parts.path
    if path == "/":
        if request.path != "/":
            return None
    elif not request.path.startswith(path):
        return None
    wanted = parse_qsl(parts.query)
    if not wanted:
        query_score = 0
    elif all(request.GET.get(key) == value for key, value in wanted):
        query_score = 1
    else:
        query_score = -1
    return (len(path), query_score)


def nav_items(request: HttpRequest) -> list[NavItem]:
    """The navigation for the signed-in user of `request`, the current section marked (at most one)."""
    sections = _sections(roles_of(getattr(request, "user", None)))
    scores = [_match_score(request, url) for _, url in sections]
    best = max((score for score in scores if score is not None), default=None)
    current_index = scores.index(best) if best is not None else -1
    alerts_url = reverse("web-alerts:list") if any(label == "Alerts" for label, _ in sections) else None
    return [
        NavItem(label, url, index == current_index, open_alert_count() if url == alerts_url else None)
        for index, (label, url) in enumerate(sections)
    ]
