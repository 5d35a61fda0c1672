"""Status words are defined once: the workflow's Django-free enums and the model choices hold the same values,
and the values a workflow history carries are the plain strings it always carried."""

from __future__ import annotations

import json

from rest_framework import serializers
from temporalio.converter import DataConverter

from rollouts.api.rollout_serializers import ActionTokenRequestSerializer
from rollouts.choices import (
    ROLLOUT_ACTIVE,
    ROLLOUT_TERMINAL,
    ROLLOUT_TRANSITIONS,
    WAVE_STATUS_FOR_GATE,
    RolloutStatus,
    WaveStatus,
)
from rollouts.web.page_selectors import ACTIONS
from workflows import policy
from workflows.types import Gate, Phase, PhaseChange, Update


def test_the_rollout_status_choices_hold_exactly_the_workflow_phases():
    assert sorted(RolloutStatus.values) == sorted(phase.value for phase in Phase)


def test_every_workflow_phase_is_a_rollout_status_with_a_transition_row():
    for phase in Phase:
        status = RolloutStatus(phase.value)
        assert status == str(phase)  # the same word (a TextChoices member and a StrEnum member compare as str)
        assert status in ROLLOUT_TRANSITIONS


def test_the_workflow_and_the_model_agree_on_which_rollouts_are_finished():
    assert {str(phase) for phase in policy.FINISHED_PHASES} == set(ROLLOUT_TERMINAL)
    assert {str(phase) for phase in policy.PAUSABLE_PHASES} <= ROLLOUT_ACTIVE
    # A finished rollout moves nowhere; an unfinished one can still end.
    assert all(not ROLLOUT_TRANSITIONS[status] for status in ROLLOUT_TERMINAL)
    assert all(ROLLOUT_TRANSITIONS[status] for status in ROLLOUT_ACTIVE)


def test_every_gate_the_workflow_opens_shows_as_a_wave_status():
    gates = {gate for gate in Gate if gate != Gate.NONE}
    assert set(WAVE_STATUS_FOR_GATE) == gates
    assert all(status in WaveStatus.values for status in WAVE_STATUS_FOR_GATE.values())


def test_the_human_actions_are_the_workflow_updates_everywhere_they_are_offered():
    assert policy.HUMAN_ACTIONS == ("promote", "abort", "rollback", "pause", "resume")
    assert set(policy.HUMAN_ACTIONS) == {update.value for update in Update}
    action_field = ActionTokenRequestSerializer().fields["action"]
    assert isinstance(action_field, serializers.ChoiceField)
    assert list(action_field.choices) == list(policy.HUMAN_ACTIONS)
    assert {name for name, *_ in ACTIONS} == set(policy.HUMAN_ACTIONS)


def test_enum_members_travel_through_temporal_as_the_plain_strings_histories_hold():
    converter = DataConverter.default.payload_converter
    with_enums = PhaseChange(7, Phase.AWAITING_PROMOTION, 1, Gate.PROMOTION, "waiting")
    with_strings = PhaseChange(7, "awaiting_promotion", 1, "promotion", "waiting")
    assert converter.to_payloads([with_enums]) == converter.to_payloads([with_strings])
    data = json.loads(converter.to_payloads([with_enums])[0].data)
    assert data["phase"] == "awaiting_promotion" and data["gate"] == "promotion"
