"""The rollout dashboard offers an action exactly when the service and the workflow would accept it.

A person's action passes two doors: `rollout_services.action_token_issue` (who may act, on an unfinished rollout)
and the workflow's update validator (`workflows.policy.human_action_refusal` over the workflow's own state). For
each role and phase the dashboard's buttons must match both doors, with the workflow's state equal to the
database projection the dashboard reads. A refused action changes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest

from approvals import services as change_services
from approvals.audit.models import DecisionRecord
from ota_project.errors import DomainError
from ota_project.roles import Role, roles_of
from rollouts import rollout_services as steps
from rollouts.choices import RolloutStatus
from rollouts.models import Rollout
from tests.support.rollouts import abort
from tests.web.helpers import html_of, page_client
from tests.web.test_rollout_pages import buttons, set_state
from workflows import policy
from workflows.types import PhaseChange

pytestmark = pytest.mark.django_db

LABELS = {"pause": "Pause", "resume": "Resume", "promote": "Promote", "abort": "Abort", "rollback": "Roll back"}
ROLES = ("operator", "author", "cab", "auditor")
PHASES = ("scheduled", "running", "awaiting_promotion", "inconclusive", "paused", "halted", "aborted")


@pytest.fixture
def people(make_user) -> dict[str, Any]:
    """The author also holds the operator role: separation of duties is what must refuse them."""
    return {
        "operator": make_user(Role.OPERATOR, username="otto-operator"),
        "author": make_user(Role.REQUESTER, Role.OPERATOR, username="ada-author"),
        "cab": make_user(Role.CAB_MEMBER, username="cid-cab"),
        "auditor": make_user(Role.AUDITOR, username="aud-auditor"),
    }


def _rollout_in(phase: str, people: dict[str, Any], approvers: tuple[Any, Any], fields: dict[str, Any]) -> Rollout:
    change = change_services.change_create(actor=people["author"], **fields)
    change = change_services.change_submit(actor=people["author"], change=change)
    change_services.approval_grant(actor=approvers[0], change=change, revision=1)
    change = change_services.approval_grant(actor=approvers[1], change=change, revision=1)
    rollout = steps.rollout_start(actor=people["operator"], change=change, start_workflow=False)
    if phase == "scheduled":
        return rollout
    steps.rollout_phase(PhaseChange(rollout.pk, RolloutStatus.RUNNING, 0))
    steps.wave_assign(rollout_id=rollout.pk, wave_index=0)
    rollout = Rollout.objects.get(pk=rollout.pk)
    if phase == "aborted":
        abort(rollout, people["operator"])
        return Rollout.objects.get(pk=rollout.pk)
    gates = {"awaiting_promotion": "promotion", "inconclusive": "inconclusive", "halted": "halted"}
    status = RolloutStatus.AWAITING_PROMOTION if phase == "inconclusive" else phase
    if phase == "running":
        return rollout
    return set_state(rollout, status, gate=gates.get(phase, ""))


def _accepted(user: Any, rollout: Rollout, action: str) -> bool:
    """Both doors: the token the service mints, then the workflow's validator on the same state."""
    wave_index = rollout.current_wave if action == "promote" else -1
    try:
        steps.action_token_issue(actor=user, rollout=rollout, action=action, reason="Because.", wave_index=wave_index)
    except DomainError:
        return False
    refusal = policy.human_action_refusal(
        action,
        actor_id=user.pk,
        actor_roles=roles_of(user),
        author_id=rollout.change.author_id,
        phase=rollout.status,
        gate=rollout.gate,
        gated_wave=rollout.current_wave,
        requested_wave=rollout.current_wave,
    )
    return refusal == ""


def _state(rollout: Rollout) -> tuple:
    fresh = Rollout.objects.get(pk=rollout.pk)
    return fresh.status, fresh.gate, fresh.current_wave, DecisionRecord.objects.count()


@pytest.mark.parametrize("phase", PHASES)
def test_the_dashboard_offers_an_action_exactly_when_it_would_be_accepted(
    phase, people, cab_member, cab_member_2, change_fields
):
    rollout = _rollout_in(phase, people, (cab_member, cab_member_2), change_fields)
    disagreements = []
    for role in ROLES:
        user = people[role]
        offered = set(buttons(html_of(page_client(user).get(f"/rollouts/{rollout.pk}/"))))
        for action, label in LABELS.items():
            before = _state(rollout)
            accepted = _accepted(user, Rollout.objects.select_related("change").get(pk=rollout.pk), action)
            assert _state(rollout) == before
            if (label in offered) != accepted:
                disagreements.append(f"{role} {action}: page offers {label in offered}, accepted {accepted}")
    assert disagreements == [], f"{phase} rollout"


def test_a_refused_person_is_told_why_and_nothing_changes(people, cab_member, cab_member_2, change_fields):
    rollout = _rollout_in("running", people, (cab_member, cab_member_2), change_fields)
    before = _state(rollout)
    html = html_of(page_client(people["author"]).get(f"/rollouts/{rollout.pk}/"))
    assert buttons(html) == [] and "another operator must decide on its rollout" in html
    refusal = steps.rollout_action_refusal(people["author"], rollout, "pause")
    assert refusal is not None and refusal.message in html
    with pytest.raises(DomainError, match="another operator must decide on its rollout"):
        steps.action_token_issue(actor=people["author"], rollout=rollout, action="pause", reason="x", wave_index=-1)
    assert _state(rollout) == before
