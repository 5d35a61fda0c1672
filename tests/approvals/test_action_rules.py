"""The `<action>_refusal` rules where the page and the service used to disagree: the service refuses, nothing changes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.utils import timezone

from approvals import services
from approvals.audit.models import DecisionRecord
from approvals.models import ChangeRequest
from ota_project.errors import NotPermitted
from ota_project.roles import Role

pytestmark = pytest.mark.django_db


def _state(change: ChangeRequest) -> tuple:
    fresh = ChangeRequest.objects.get(pk=change.pk)
    return fresh.status, fresh.revision, fresh.title, fresh.scheduled_start, DecisionRecord.objects.count()


def test_a_cab_member_cannot_cancel_a_draft_nobody_else_can_see(requester, cab_member, change_fields):
    draft = services.change_create(actor=requester, **change_fields)
    before = _state(draft)
    with pytest.raises(NotPermitted, match="Only the author may cancel a draft"):
        services.change_cancel(actor=cab_member, change=draft, reason="Tidying up.")
    assert _state(draft) == before


def test_an_author_who_lost_the_requester_role_can_no_longer_edit(requester, change_fields):
    draft = services.change_create(actor=requester, **change_fields)
    requester.groups.remove(Group.objects.get(name=Role.REQUESTER))
    author = type(requester).objects.get(pk=requester.pk)  # roles are cached per instance
    before = _state(draft)
    with pytest.raises(NotPermitted, match="only while holding the requester role"):
        services.change_update(actor=author, change=draft, title="Edited without the role")
    assert _state(draft) == before


def test_the_author_holding_the_operator_role_cannot_schedule_over_the_api(approved_change, requester, client_for):
    requester.groups.add(Group.objects.get(name=Role.OPERATOR))
    author = type(requester).objects.get(pk=requester.pk)
    before = _state(approved_change)
    start = (timezone.now() + timedelta(minutes=5)).isoformat()
    response = client_for(author).post(
        f"/api/v1/changes/{approved_change.pk}/schedule/", {"start": start}, format="json"
    )
    assert response.status_code == 403
    assert "another operator must schedule it" in response.json()["error"]["message"]
    assert _state(approved_change) == before


def test_scheduling_again_at_the_same_start_is_a_no_op(approved_change, operator):
    start = timezone.now() + timedelta(minutes=5)
    scheduled = services.change_schedule(actor=operator, change=approved_change, start=start)
    before = _state(scheduled)
    assert services.change_schedule(actor=operator, change=scheduled, start=start).scheduled_start == start
    assert _state(scheduled) == before
