"""Rollout API contract without a workflow engine: who may start and act, and what refusals look like."""

import pytest

from approvals.audit.models import DecisionRecord
from rollouts import rollout_services as steps
from rollouts.models import Rollout
from tests.support.rollouts import authorize

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_temporal(settings):
    settings.TEMPORAL_ENABLED = False


def test_operator_starts_a_rollout_and_sees_its_waves(client_for, operator, approved_change, auditor):
    response = client_for(operator).post("/api/v1/rollouts/", {"change": approved_change.pk}, format="json")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["status"] == "scheduled" and body["workflow_id"] == f"rollout-{body['id']}"
    assert [w["planned_devices"] for w in body["waves"]] == [2, 2, 16]
    listed = client_for(auditor).get("/api/v1/rollouts/").json()
    assert listed["count"] == 1


@pytest.mark.parametrize("who", ["requester", "cab_member", "auditor"])
def test_only_operators_start_rollouts(client_for, approved_change, request, who):
    response = client_for(request.getfixturevalue(who)).post(
        "/api/v1/rollouts/", {"change": approved_change.pk}, format="json"
    )
    assert response.status_code == 403
    assert not Rollout.objects.exists()


def test_starting_twice_is_409(client_for, operator, approved_change):
    client_for(operator).post("/api/v1/rollouts/", {"change": approved_change.pk}, format="json")
    again = client_for(operator).post("/api/v1/rollouts/", {"change": approved_change.pk}, format="json")
    assert again.status_code == 409


def test_unknown_or_invisible_change_is_404(client_for, operator):
    assert client_for(operator).post("/api/v1/rollouts/", {"change": 999999}, format="json").status_code == 404


def test_actions_refused_before_reaching_the_workflow(client_for, operator, approved_change, make_user):
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    author = approved_change.author
    from django.contrib.auth.models import Group

    author.groups.add(Group.objects.get(name="operator"))
    before = DecisionRecord.objects.count()
    refused = client_for(author).post(f"/api/v1/rollouts/{rollout.pk}/promote/", {"wave_index": 0}, format="json")
    assert refused.status_code == 403 and "author" in refused.json()["error"]["message"]
    no_reason = client_for(operator).post(f"/api/v1/rollouts/{rollout.pk}/abort/", {}, format="json")
    assert no_reason.status_code == 400 and "reason" in no_reason.json()["error"]["fields"]
    authorize(rollout, "abort", operator, reason="test")
    steps.rollout_finish(rollout_id=rollout.pk, outcome="aborted", reason="test", actor_id=operator.pk)
    finished = client_for(operator).post(f"/api/v1/rollouts/{rollout.pk}/pause/", {}, format="json")
    assert finished.status_code == 409
    assert DecisionRecord.objects.filter(action__startswith="rollout.p").count() == 0
    assert DecisionRecord.objects.count() > before  # only the abort and the finish


def test_deployments_list_with_filters(client_for, operator, approved_change, auditor):
    rollout = steps.rollout_start(actor=operator, change=approved_change)
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    rows = client_for(auditor).get(f"/api/v1/rollouts/{rollout.pk}/deployments/?wave=0&status=pending").json()
    assert rows["count"] == 2 and rows["results"][0]["kind"] == "update"
    # What each device ran when the deployment was created: the software register's "before".
    assert {(r["from_version"], r["from_release_counter"]) for r in rows["results"]} == {("1.0.0", 1)}
    bad = client_for(auditor).get(f"/api/v1/rollouts/{rollout.pk}/deployments/?status=exploded")
    assert bad.status_code == 400
