"""Rollout API: start an approved change, watch it, and promote / pause / resume / abort / roll back."""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import django_filters
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.request import Request
from rest_framework.response import Response

from approvals.selectors import change_get_for_user
from ota_project.exceptions import error_body
from ota_project.roles import Role, acting_user, roles_of
from ota_project.serializers import ApiErrorSerializer
from rollouts import rollout_services
from rollouts.action_tokens import TOKEN_TTL
from rollouts.api.rollout_serializers import (
    ActionTokenRequestSerializer,
    ActionTokenSerializer,
    DeploymentSerializer,
    RolloutActionSerializer,
    RolloutSerializer,
    RolloutStartSerializer,
    WorkflowStatusSerializer,
)
from rollouts.choices import DeploymentKind, DeploymentStatus, RolloutStatus
from rollouts.models import Deployment, Rollout
from workflows.policy import HUMAN_ACTIONS
from workflows.types import Update


class RolloutFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=RolloutStatus.choices)
    change = django_filters.NumberFilter(field_name="change_id")

    class Meta:
        model = Rollout
        fields = ["status", "change"]


class DeploymentFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=DeploymentStatus.choices)
    kind = django_filters.ChoiceFilter(choices=DeploymentKind.choices)
    wave = django_filters.NumberFilter(field_name="wave__index")
    device = django_filters.CharFilter(field_name="device__serial")

    class Meta:
        model = Deployment
        fields = ["status", "kind", "wave", "device"]


def _action_view(name: str) -> Callable[..., Response]:
    @extend_schema(request=RolloutActionSerializer, responses=WorkflowStatusSerializer, operation_id=f"rollouts_{name}")
    def view(self: RolloutViewSet, request: Request, pk: str) -> Response:
        data = RolloutActionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        result = rollout_services.rollout_act(
            actor=acting_user(request), rollout=self.get_object(), action=name, **data.validated_data
        )
        return Response(_status_data(result))

    view.__name__ = name
    view.__doc__ = f"{name.capitalize()} the rollout (operators who did not author the change)."
    return action(detail=True, methods=["post"])(view)


def _status_data(result: Any) -> dict[str, Any]:
    data = asdict(result)
    data.pop("last_health", None)
    return data


class RolloutViewSet(mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Rollouts: start, list, detail with waves, per-device deployments, and human decisions."""

    serializer_class = RolloutSerializer
    filterset_class = RolloutFilter
    action_roles = {name: (Role.OPERATOR,) for name in ("create", "action_token", *HUMAN_ACTIONS)}

    def get_queryset(self) -> QuerySet[Rollout]:
        return Rollout.objects.select_related("release", "rollback_release", "started_by").prefetch_related("waves")

    @extend_schema(request=RolloutStartSerializer, responses={201: RolloutSerializer})
    def create(self, request: Request) -> Response:
        data = RolloutStartSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        change = change_get_for_user(acting_user(request), data.validated_data["change"])
        rollout = rollout_services.rollout_start(actor=acting_user(request), change=change)
        return Response(RolloutSerializer(self.get_queryset().get(pk=rollout.pk)).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        responses=DeploymentSerializer(many=True),
        parameters=[
            OpenApiParameter("status", str, enum=DeploymentStatus.values, many=True),
            OpenApiParameter("kind", str, enum=DeploymentKind.values),
            OpenApiParameter("wave", int),
            OpenApiParameter("device", str, description="Device serial."),
        ],
    )
    @action(detail=True, methods=["get"], filter_backends=[])
    def deployments(self, request: Request, pk: str) -> Response:
        rollout = self.get_object()
        filtered = DeploymentFilter(
            request.query_params,
            queryset=rollout.deployments.select_related("device", "release", "wave").order_by("pk"),
        )
        if not filtered.is_valid():
            raise ValidationError(filtered.errors)
        page = self.paginate_queryset(filtered.qs)
        return self.get_paginated_response(DeploymentSerializer(page, many=True).data)

    @extend_schema(responses={200: WorkflowStatusSerializer, 503: ApiErrorSerializer})
    @action(detail=True, methods=["get"], url_path="workflow-status")
    def workflow_status(self, request: Request, pk: str) -> Response:
        """The workflow's own answer to the `status` query (the rollout detail is the database projection)."""
        from workflows.client import query_rollout_status

        result = query_rollout_status(self.get_object().pk)
        if result is None:
            return Response(
                error_body(
                    "workflow_unavailable",
                    "The rollout's workflow cannot be asked right now (finished, or "
                    "no worker or server is reachable); the rollout detail shows the last known state.",
                ),
                status=status.HTTP_503_SERVICE_UNAVAILABLE,
            )
        return Response(_status_data(result))

    @extend_schema(request=ActionTokenRequestSerializer, responses={201: ActionTokenSerializer})
    @action(detail=True, methods=["post"], url_path="action-token")
    def action_token(self, request: Request, pk: str) -> Response:
        """Mint the proof a `temporal workflow update` needs: bound to you, this rollout, action and wave; 5 minutes,
        usable once. The answer includes the ready-to-run `temporal` command."""
        data = ActionTokenRequestSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        rollout = self.get_object()
        fields = data.validated_data
        token = rollout_services.action_token_issue(
            actor=acting_user(request),
            rollout=rollout,
            action=fields["action"],
            reason=fields["reason"],
            wave_index=fields["wave_index"],
        )
        update_input = {
            "actor_id": request.user.pk,
            "actor_roles": sorted(roles_of(request.user)),
            "reason": fields["reason"],
            "wave_index": fields["wave_index"],
            "token": token,
        }
        body = {
            "token": token,
            "expires_in_seconds": int(TOKEN_TTL.total_seconds()),
            "workflow_id": rollout.workflow_id,
            "update": fields["action"],
            "input": update_input,
            "command": (
                f"temporal workflow update execute --workflow-id {rollout.workflow_id} --name {fields['action']} "
                f"--input {shlex.quote(json.dumps(update_input, separators=(',', ':')))}"
            ),
        }
        return Response(ActionTokenSerializer(body).data, status=status.HTTP_201_CREATED)

    promote = _action_view(Update.PROMOTE)
    pause = _action_view(Update.PAUSE)
    resume = _action_view(Update.RESUME)
    abort = _action_view(Update.ABORT)
    rollback = _action_view(Update.ROLLBACK)
