"""role_required and RoleRequiredMixin: sign-in first, then the right role; the 403 page names the missing role."""

from __future__ import annotations

import pytest
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.urls import path
from django.views import View

from ota_project.roles import Role
from ota_project.urls import urlpatterns as site_urlpatterns
from ota_project.web.access import RoleRequiredMixin, role_required
from tests.support.html import find, find_all
from tests.web.helpers import page_client

pytestmark = [pytest.mark.django_db, pytest.mark.urls(__name__)]


@role_required(Role.OPERATOR)
def operator_page(request):
    return HttpResponse("operator content")


@role_required(Role.CAB_MEMBER, Role.SECURITY_OFFICER)
def approver_page(request):
    return HttpResponse("approver content")


class AuditorPage(RoleRequiredMixin, View):
    required_roles = (Role.AUDITOR,)

    def get(self, request):
        return HttpResponse("auditor content")


def denied_page(request):
    raise PermissionDenied("You are the author of this change.")


urlpatterns = [
    path("t/operator/", operator_page),
    path("t/approver/", approver_page),
    path("t/auditor/", AuditorPage.as_view()),
    path("t/denied/", denied_page),
    *site_urlpatterns,
]


@pytest.mark.parametrize("url", ["/t/operator/", "/t/approver/", "/t/auditor/"])
def test_anonymous_is_sent_to_sign_in_and_back(url):
    response = page_client().get(url + "?page=2")
    assert response.status_code == 302
    assert response["Location"] == f"/login/?next={url}%3Fpage%3D2"


def test_anonymous_htmx_request_redirects_the_whole_page():
    response = page_client().get(
        "/t/operator/", HTTP_HX_REQUEST="true", HTTP_HX_CURRENT_URL="http://testserver/rollouts/4/"
    )
    assert response.status_code == 200
    assert response["HX-Redirect"] == "/login/?next=/rollouts/4/"


def test_role_holder_gets_the_page(operator, cab_member, security_officer, auditor):
    assert page_client(operator).get("/t/operator/").content == b"operator content"
    assert page_client(cab_member).get("/t/approver/").content == b"approver content"
    assert page_client(security_officer).get("/t/approver/").content == b"approver content"
    assert page_client(auditor).get("/t/auditor/").content == b"auditor content"


def test_missing_role_is_a_403_page_naming_the_role(auditor):
    response = page_client(auditor).get("/t/operator/")
    html = response.content.decode()
    assert response.status_code == 403
    assert "You need the Operator role to see this page." in html
    assert "operator content" not in html
    find(html, "a", class_="skip-link")  # exactly one skip link: find fails the test otherwise
    assert len(find_all(html, "h1")) == 1


def test_403_names_every_role_that_would_do(requester):
    html = page_client(requester).get("/t/approver/").content.decode()
    assert "You need the CAB member or Security officer role to see this page." in html


def test_mixin_refuses_like_the_decorator(operator):
    response = page_client(operator).get("/t/auditor/")
    assert response.status_code == 403
    assert "You need the Auditor (read-only) role to see this page." in response.content.decode()


def test_user_without_any_role_is_refused(make_user):
    response = page_client(make_user()).get("/t/operator/")
    assert response.status_code == 403


def test_permission_denied_from_a_view_shows_its_message_in_the_layout(operator):
    response = page_client(operator).get("/t/denied/")
    html = response.content.decode()
    assert response.status_code == 403
    assert "You are the author of this change." in html and "Rollouts" in html


def test_role_required_needs_a_role():
    with pytest.raises(ValueError):
        role_required()
