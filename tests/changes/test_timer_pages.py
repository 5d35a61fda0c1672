"""The change's timers where people look: the change page and the CAB queue show the review deadline (and when it
is overdue and escalated), when the approval lapses or that it lapsed, the scheduled start and a held start."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from approvals import services
from approvals import timers as change_timers
from approvals.models import ChangeRequest
from ota_project.roles import Role
from tests.web.helpers import page_client, text_of


@pytest.fixture(autouse=True)
def _no_temporal(settings: Any) -> None:
    settings.TEMPORAL_ENABLED = False


def test_the_queue_and_the_page_show_the_review_deadline_overdue_and_escalated(
    submitted_change: ChangeRequest, cab_member: Any, make_user: Any
):
    make_user(Role.CAB_CHAIR, username="chloe-chair")
    page = text_of(page_client(cab_member).get(f"/changes/{submitted_change.pk}/"))
    assert "Review due" in page and "overdue" not in page
    # The review began 30 days ago: the deadline has passed and the timer escalates.
    ChangeRequest.objects.filter(pk=submitted_change.pk).update(review_started_at=timezone.now() - timedelta(days=30))
    assert change_timers.change_review_timers_fire(change_id=submitted_change.pk, now=timezone.now()) == ["escalation"]
    queue = text_of(page_client(cab_member).get("/changes/"))
    assert "Review due" in queue and "Overdue" in queue
    page = text_of(page_client(cab_member).get(f"/changes/{submitted_change.pk}/"))
    assert "overdue , escalated to the CAB chair" in page  # text_of leaves a space where </strong> was


def test_a_lapsed_approval_is_shown_on_the_page_and_in_the_queue(approved_change: ChangeRequest, cab_member: Any):
    page = text_of(page_client(cab_member).get(f"/changes/{approved_change.pk}/"))
    assert "The approval lapses" in page
    services.change_approval_lapse(change_id=approved_change.pk, now=approved_change.requested_window_end)
    page = text_of(page_client(cab_member).get(f"/changes/{approved_change.pk}/"))
    assert "Approval lapsed" in page and "the requested window closed" in page and "fresh decision" in page
    assert "Approval lapsed" in text_of(page_client(cab_member).get("/changes/"))


def test_a_scheduled_start_and_a_held_start_are_shown(approved_change: ChangeRequest, operator: Any, cab_member: Any):
    start = timezone.now() + timedelta(hours=1)
    services.change_schedule(actor=operator, change=approved_change, start=start)
    page = text_of(page_client(cab_member).get(f"/changes/{approved_change.pk}/"))
    assert f"as {operator.username}, if the pre-flight passes" in page
    services.change_start_hold(change_id=approved_change.pk, reason="Another rollout overlaps.", now=start)
    page = text_of(page_client(cab_member).get(f"/changes/{approved_change.pk}/"))
    assert "Scheduled start held" in page and "Another rollout overlaps." in page
    assert "starts by itself" not in page
