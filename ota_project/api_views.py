"""Identity endpoints shared by every role."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.authtoken.models import Token
from rest_framework.authtoken.serializers import AuthTokenSerializer
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from ota_project.roles import roles_of
from ota_project.signals import REFUSAL_API_AUTH_FAILED, refusal

MeSerializer = inline_serializer(
    "Me",
    {
        "id": serializers.IntegerField(),
        "username": serializers.CharField(),
        "roles": serializers.ListField(child=serializers.CharField()),
    },
)
TokenSerializer = inline_serializer("Token", {"token": serializers.CharField()})


class MeView(APIView):
    """The signed-in user (the id that workflow updates and the decision record name) and the roles they hold."""

    @extend_schema(responses=MeSerializer)
    def get(self, request: Request) -> Response:
        user = request.user
        return Response({"id": user.pk, "username": user.get_username(), "roles": sorted(roles_of(user))})


class TokenIssueView(APIView):
    """Exchange a username and password for an API token (`Authorization: Token <key>`)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []

    @extend_schema(request=AuthTokenSerializer, responses=TokenSerializer)
    def post(self, request: Request) -> Response:
        serializer = AuthTokenSerializer(data=request.data, context={"request": request})
        if not serializer.is_valid():
            username = request.data.get("username", "") if hasattr(request.data, "get") else ""
            refusal.send_robust(
                sender=TokenIssueView,
                request=request,
                kind=REFUSAL_API_AUTH_FAILED,
                source="api.TokenIssueView",
                message="A token was asked for with a wrong or missing user name or password.",
                subject=f"username:{str(username)[:150]}",
            )
            raise serializers.ValidationError(serializer.errors)
        token, _ = Token.objects.get_or_create(user=serializer.validated_data["user"])
        return Response({"token": token.key})
