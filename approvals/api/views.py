"""Change-control API: thin views over approvals.services and approvals.selectors."""

from __future__ import annotations

from typing import Protocol

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from django.http import FileResponse, Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from approvals import selectors, services
from approvals.api import serializers as s
from approvals.api.filters import ChangeFilter
from approvals.audit.api.serializers import AuditRecordSerializer
from approvals.models import ApprovalPolicy, ChangeRequest, ChangeTemplate, RiskQuestion
from approvals.risk import risk_answers_validate, risk_assess, risk_questionnaire
from devices.scope import scope_parse, scope_summary
from ota_project.roles import Role, acting_user
from ota_project.serializers import ReasonInputSerializer


class _DecisionService(Protocol):
    def __call__(self, *, actor: User, change: ChangeRequest, revision: int, comment: str) -> ChangeRequest: ...


def _change_response(change: ChangeRequest, code: int = status.HTTP_200_OK) -> Response:
    return Response(s.ChangeSerializer(change).data, status=code)


class ChangeViewSet(mixins.ListModelMixin, viewsets.GenericViewSet):
    """Change requests: file, edit, submit, decide, schedule, cancel, review; plus scope, policy and history."""

    serializer_class = s.ChangeSerializer
    filterset_class = ChangeFilter
    action_roles = {
        "create": (Role.REQUESTER,),
        "partial_update": (Role.REQUESTER,),
        "submit": (Role.REQUESTER,),
        # Deciding is open to every role at the door so the service can say precisely why someone is refused
        # (author, role outside the policy); the service enforces it.
        "approve": tuple(Role.values),
        "reject": tuple(Role.values),
        "request_changes": tuple(Role.values),
        "schedule": (Role.OPERATOR,),
        "cancel": (Role.REQUESTER, Role.CAB_MEMBER),
        "evidence": (Role.REQUESTER,),
        "retrospective": (Role.CAB_MEMBER, Role.SECURITY_OFFICER),
        "post_review": (Role.CAB_MEMBER, Role.SECURITY_OFFICER),
    }

    def get_queryset(self) -> QuerySet[ChangeRequest]:
        if getattr(self, "swagger_fake_view", False):  # drf-spectacular builds the schema with no signed-in user
            return ChangeRequest.objects.none()
        return selectors.change_list_for_user(acting_user(self.request))

    def _change(self, pk: str) -> ChangeRequest:
        return selectors.change_get_for_user(acting_user(self.request), pk)

    @extend_schema(request=s.ChangeWriteSerializer, responses={201: s.ChangeSerializer})
    def create(self, request: Request) -> Response:
        data = s.ChangeWriteSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        change = services.change_create(actor=acting_user(request), **data.validated_data)
        return _change_response(change, status.HTTP_201_CREATED)

    def retrieve(self, request: Request, pk: str) -> Response:
        return _change_response(self._change(pk))

    @extend_schema(request=s.ChangeWriteSerializer, responses=s.ChangeSerializer)
    def partial_update(self, request: Request, pk: str) -> Response:
        change = self._change(pk)
        data = s.ChangeWriteSerializer(data=request.data, partial=True)
        data.is_valid(raise_exception=True)
        return _change_response(
            services.change_update(actor=acting_user(request), change=change, **data.validated_data)
        )

    @extend_schema(request=None, responses=s.ChangeSerializer)
    @action(detail=True, methods=["post"])
    def submit(self, request: Request, pk: str) -> Response:
        return _change_response(services.change_submit(actor=acting_user(request), change=self._change(pk)))

    def _decide(self, request: Request, pk: str, service: _DecisionService) -> Response:
        change = self._change(pk)
        data = s.RevisionDecisionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _change_response(service(actor=acting_user(request), change=change, **data.validated_data))

    @extend_schema(request=s.RevisionDecisionSerializer, responses=s.ChangeSerializer)
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        return self._decide(request, pk, services.approval_grant)

    @extend_schema(request=s.RevisionDecisionSerializer, responses=s.ChangeSerializer)
    @action(detail=True, methods=["post"])
    def reject(self, request: Request, pk: str) -> Response:
        return self._decide(request, pk, services.approval_reject)

    @extend_schema(request=s.RevisionDecisionSerializer, responses=s.ChangeSerializer)
    @action(detail=True, methods=["post"], url_path="request-changes")
    def request_changes(self, request: Request, pk: str) -> Response:
        return self._decide(request, pk, services.approval_request_changes)

    @extend_schema(request=s.ScheduleSerializer, responses=s.ChangeSerializer)
    @action(detail=True, methods=["post"])
    def schedule(self, request: Request, pk: str) -> Response:
        change = self._change(pk)
        data = s.ScheduleSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _change_response(
            services.change_schedule(actor=acting_user(request), change=change, **data.validated_data)
        )

    @extend_schema(request=ReasonInputSerializer, responses=s.ChangeSerializer)
    @action(detail=True, methods=["post"])
    def cancel(self, request: Request, pk: str) -> Response:
        change = self._change(pk)
        data = ReasonInputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _change_response(
            services.change_cancel(actor=acting_user(request), change=change, **data.validated_data)
        )

    @extend_schema(request=s.CommentSerializer, responses=s.ChangeSerializer)
    @action(detail=True, methods=["post"])
    def retrospective(self, request: Request, pk: str) -> Response:
        change = self._change(pk)
        data = s.CommentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _change_response(
            services.change_retrospective_complete(actor=acting_user(request), change=change, **data.validated_data)
        )

    @extend_schema(request=s.CommentSerializer, responses=s.ChangeSerializer)
    @action(detail=True, methods=["post"], url_path="post-review")
    def post_review(self, request: Request, pk: str) -> Response:
        change = self._change(pk)
        data = s.CommentSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return _change_response(
            services.change_post_implementation_review(actor=acting_user(request), change=change, **data.validated_data)
        )

    @extend_schema(responses=s.ScopeSummarySerializer)
    @action(detail=True, methods=["get"])
    def scope(self, request: Request, pk: str) -> Response:
        return Response(scope_summary(self._change(pk).scope))

    @extend_schema(responses=s.PolicyProgressSerializer)
    @action(detail=True, methods=["get"])
    def policy(self, request: Request, pk: str) -> Response:
        change = self._change(pk)
        return Response(
            {**s.progress_data(change), "blockers": selectors.change_decision_blockers(acting_user(request), change)}
        )

    @extend_schema(responses=s.ApprovalSerializer(many=True))
    @action(detail=True, methods=["get"])
    def approvals(self, request: Request, pk: str) -> Response:
        change = self._change(pk)
        return Response(s.ApprovalSerializer(change.approvals.select_related("approver"), many=True).data)

    @extend_schema(responses=AuditRecordSerializer(many=True))
    @action(detail=True, methods=["get"])
    def history(self, request: Request, pk: str) -> Response:
        page = self.paginate_queryset(selectors.change_history(self._change(pk)))
        return self.get_paginated_response(AuditRecordSerializer(page, many=True).data)

    @extend_schema(methods=["GET"], responses=s.EvidenceSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        request={"multipart/form-data": s.EvidenceUploadSerializer},
        responses={201: s.EvidenceSerializer},
    )
    @action(detail=True, methods=["get", "post"])
    def evidence(self, request: Request, pk: str) -> Response:
        change = self._change(pk)
        if request.method == "GET":
            return Response(s.EvidenceSerializer(change.evidence.select_related("uploaded_by"), many=True).data)
        data = s.EvidenceUploadSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        evidence = services.evidence_add(actor=acting_user(request), change=change, upload=data.validated_data["file"])
        return Response(s.EvidenceSerializer(evidence).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={(200, "application/octet-stream"): OpenApiTypes.BINARY})
    @action(detail=True, methods=["get"], url_path=r"evidence/(?P<evidence_id>[0-9]{1,18})")
    def evidence_download(self, request: Request, pk: str, evidence_id: str) -> FileResponse:
        change = self._change(pk)
        evidence = change.evidence.filter(pk=int(evidence_id)).first()
        if evidence is None:
            raise Http404("No such evidence file.")
        path = settings.EVIDENCE_ROOT / evidence.storage_path
        response = FileResponse(open(path, "rb"), as_attachment=True, filename=evidence.file_name)
        response["ETag"] = f'"{evidence.sha256}"'
        return response

    @extend_schema(responses=s.ChangeSerializer(many=True))
    @action(detail=False, methods=["get"])
    def queue(self, request: Request) -> Response:
        page = self.paginate_queryset(selectors.cab_queue(acting_user(request)))
        return self.get_paginated_response(s.ChangeSerializer(page, many=True).data)

    @extend_schema(responses=s.ChangeSerializer(many=True))
    @action(detail=False, methods=["get"], url_path="overdue-retrospectives")
    def overdue_retrospectives(self, request: Request) -> Response:
        visible = selectors.change_list_for_user(acting_user(request))
        page = self.paginate_queryset(visible.filter(pk__in=selectors.change_list_retrospective_overdue().values("pk")))
        return self.get_paginated_response(s.ChangeSerializer(page, many=True).data)


class ScopePreviewView(APIView):
    """How many devices a target scope would hit, by hardware model, region and version (no writes)."""

    write_roles = tuple(Role.values)

    @extend_schema(request=s.ScopePreviewSerializer, responses=s.ScopeSummarySerializer)
    def post(self, request: Request) -> Response:
        data = s.ScopePreviewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        return Response(scope_summary(scope_parse(data.validated_data["target_scope"])))


class RiskPreviewView(APIView):
    """Score a questionnaire against a scope without filing anything (for the live form)."""

    write_roles = tuple(Role.values)

    @extend_schema(request=s.RiskPreviewSerializer, responses=s.RiskAssessmentSerializer)
    def post(self, request: Request) -> Response:
        data = s.RiskPreviewSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        answers = risk_answers_validate(data.validated_data["risk_answers"], risk_questionnaire())
        summary = scope_summary(scope_parse(data.validated_data["target_scope"]))
        return Response(s.RiskAssessmentSerializer(risk_assess(answers=answers, scope_summary=summary)).data)


class RiskQuestionViewSet(viewsets.ReadOnlyModelViewSet):
    """The active risk questionnaire (administrators edit it in the admin)."""

    serializer_class = s.RiskQuestionSerializer
    queryset = RiskQuestion.objects.filter(is_active=True)
    lookup_field = "key"
    pagination_class = None


class ApprovalPolicyViewSet(viewsets.ReadOnlyModelViewSet):
    """The approval policy per change type and risk level."""

    serializer_class = s.ApprovalPolicySerializer
    queryset = ApprovalPolicy.objects.prefetch_related("requirements")
    pagination_class = None


class ChangeTemplateViewSet(viewsets.ReadOnlyModelViewSet):
    """Pre-approved templates for standard changes."""

    serializer_class = s.ChangeTemplateSerializer
    queryset = ChangeTemplate.objects.filter(is_active=True).prefetch_related("hardware_models")
    pagination_class = None
