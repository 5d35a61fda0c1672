"""Shapes of rollout requests and responses."""

from __future__ import annotations

from rest_framework import serializers

from ota_project.serializers import InputSerializer
from rollouts.choices import DeploymentKind, DeploymentStatus
from rollouts.models import Deployment, Rollout, Wave
from workflows.policy import HUMAN_ACTIONS


class RolloutStartSerializer(InputSerializer):
    change = serializers.IntegerField(min_value=1, max_value=2**63 - 1)


class RolloutActionSerializer(InputSerializer):
    """A person's decision on a rollout; promote names the wave it promotes."""

    reason = serializers.CharField(max_length=2000, required=False, allow_blank=True, default="")
    wave_index = serializers.IntegerField(min_value=0, max_value=100, required=False, default=-1)


class ActionTokenRequestSerializer(RolloutActionSerializer):
    """Which action the token is for (it proves this person asked for exactly this, once, for a few minutes)."""

    action = serializers.ChoiceField(choices=list(HUMAN_ACTIONS))


class ActionTokenSerializer(serializers.Serializer):
    """A proof of the signed-in person for one rollout action, and the `temporal` command that uses it."""

    token = serializers.CharField()
    expires_in_seconds = serializers.IntegerField()
    workflow_id = serializers.CharField()
    update = serializers.CharField()  # type: ignore[assignment]  # a declared field: the metaclass takes it off the class, BaseSerializer.update is untouched
    input = serializers.DictField()
    command = serializers.CharField()


class WaveSerializer(serializers.ModelSerializer):
    class Meta:
        model = Wave
        fields = [
            "index",
            "name",
            "status",
            "planned_devices",
            "assigned_devices",
            "started_at",
            "verdict_at",
            "health",
            "signals",  # the health gates' last reading: verdict, reason and every comparison's numbers
        ]
        read_only_fields = fields


class RolloutSerializer(serializers.ModelSerializer):
    release = serializers.CharField(source="release.version")
    rollback_release = serializers.CharField(source="rollback_release.version")
    started_by = serializers.CharField(source="started_by.username")
    workflow_id = serializers.CharField()
    waves = WaveSerializer(many=True)

    class Meta:
        model = Rollout
        fields = [
            "id",
            "change",
            "release",
            "rollback_release",
            "plan_hash",
            "status",
            "current_wave",
            "gate",
            "status_reason",
            "last_health",
            "started_by",
            "created_at",
            "updated_at",
            "halted_at",
            "finished_at",
            "workflow_id",
            "waves",
        ]
        read_only_fields = fields


class DeploymentSerializer(serializers.ModelSerializer):
    device = serializers.CharField(source="device.serial")
    release = serializers.CharField(source="release.version")
    wave = serializers.IntegerField(source="wave.index")
    kind = serializers.ChoiceField(choices=DeploymentKind.choices)
    status = serializers.ChoiceField(choices=DeploymentStatus.choices)

    class Meta:
        model = Deployment
        fields = [
            "id",
            "device",
            "from_version",
            "from_release_counter",
            "release",
            "wave",
            "kind",
            "status",
            "not_before",
            "deadline_at",
            "attempts",
            "failure_class",
            "detail",
            "created_at",
            "updated_at",
            "finished_at",
        ]
        read_only_fields = fields


class WorkflowStatusSerializer(serializers.Serializer):
    """The workflow's own view (Temporal query), next to the database projection."""

    phase = serializers.CharField()
    wave_index = serializers.IntegerField()
    wave_name = serializers.CharField()
    waves_total = serializers.IntegerField()
    paused = serializers.BooleanField()
    gate = serializers.CharField(allow_blank=True)
    last_verdict = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)
