"""The newcomer's story of `make run` (README, "Try it in make run"): the demo's approved change, scheduled two minutes
ahead by olga on its page, starts by itself at that minute as olga — over the demo data `seed_demo` builds, the
change page's Schedule form, and ChangeWorkflow on the time-skipping test server with the real activities."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.choices import ChangeStatus
from approvals.models import ChangeRequest
from devices.choices import SIMULATED_TAG
from rollouts.models import Rollout
from tests.changes.support import TimeSkipping, time_skipping_worker
from tests.support.html import find, find_all, visible_text
from tests.temporal_support import wait_until
from tests.web.helpers import html_of, page_client

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def demo(settings: Any, tmp_path: Any, django_capture_on_commit_callbacks: Any) -> ChangeRequest:
    """The demo data of `make run`, with this test's own key labels and served tree; its approved live change."""
    settings.DATA_DIR = tmp_path
    settings.IMAGE_REPOSITORY_DIR = tmp_path / "repository"
    settings.PKCS11_LABEL_PREFIX = f"demo-{uuid.uuid4().hex[:12]}"
    settings.TEMPORAL_ENABLED = False  # the test starts and signals the workflow itself (tests/changes/support.py)
    settings.OTA_CHANGE_TIMERS_TEMPORAL_CLOCK = True
    with django_capture_on_commit_callbacks(execute=True):
        call_command("seed_demo")
    return ChangeRequest.objects.get(
        title="Modem reconnect fix for the simulated 5G test fleet", target_scope__tags=[SIMULATED_TAG]
    )


@pytest.fixture
def timers(demo: ChangeRequest) -> Any:
    with time_skipping_worker() as skipping:
        yield skipping


def test_the_demo_change_scheduled_two_minutes_ahead_by_olga_starts_by_itself_as_olga(
    demo: ChangeRequest, timers: TimeSkipping
):
    olga = get_user_model().objects.get(username="olga")
    assert demo.status == ChangeStatus.APPROVED and not Rollout.objects.filter(change=demo).exists()
    client = page_client(olga)
    page = html_of(client.get(f"/changes/{demo.pk}/"))
    form = find(page, "form", action=f"/changes/{demo.pk}/schedule/")
    fields = {field.get("name"): field.get("value") for field in find_all(form, "input") if field.get("name")}
    suggested = datetime.fromisoformat(str(fields["schedule-start"])).replace(tzinfo=timezone.now().tzinfo)
    # Pre-filled a few minutes ahead, on the clock shown beside the field (UTC for a browser that sent no zone).
    assert timedelta(minutes=1) < suggested - timezone.now() <= timedelta(minutes=3)

    # The newcomer sets it two minutes from now and presses Schedule.
    start = (timezone.now() + timedelta(minutes=2)).replace(second=0, microsecond=0)
    response = client.post(
        f"/changes/{demo.pk}/schedule/", {**fields, "schedule-start": start.strftime("%Y-%m-%dT%H:%M")}
    )
    assert response.status_code == 302, visible_text(html_of(response))
    change = ChangeRequest.objects.get(pk=demo.pk)
    assert change.status == ChangeStatus.SCHEDULED and change.scheduled_start == start and change.scheduled_by == olga
    timers_card = visible_text(html_of(client.get(f"/changes/{demo.pk}/")))
    assert "Timers" in timers_card and "olga" in timers_card

    timers.start(demo.pk)  # what nudge_change_workflow does after the schedule commits (signal-with-start)
    state = timers.settled(demo.pk, lambda s: s.next_due == "scheduled_start")
    assert state.scheduled_start == start.isoformat()
    timers.skip(timedelta(seconds=30))
    assert not Rollout.objects.filter(change=demo).exists()  # not before its minute

    timers.skip(timedelta(minutes=2))
    wait_until(lambda: Rollout.objects.filter(change=demo).exists(), 60, "the demo rollout to start", interval=0.2)
    rollout = Rollout.objects.get(change=demo)
    assert rollout.started_by == olga
    assert ChangeRequest.objects.get(pk=demo.pk).status == ChangeStatus.IMPLEMENTING
    record = DecisionRecord.objects.get(
        object_type="rollout", object_id=str(rollout.pk), action="rollout.scheduled_start"
    )
    assert record.actor is None and record.actor_name == "system:change-timer for olga"
    assert not DecisionRecord.objects.filter(object_id=str(demo.pk), action="change.start_held").exists()
