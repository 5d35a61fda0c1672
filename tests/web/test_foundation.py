"""The web UI's shared layer: sign-in, lockout, sign-out, the landing page, navigation and error pages."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth import SESSION_KEY
from django.test import Client, RequestFactory

from ota_project import views as error_views
from ota_project.roles import Role
from tests.support.html import find, find_all, row_cells, visible_text
from tests.web.helpers import page_client

pytestmark = pytest.mark.django_db

PASSWORD = "correct-horse-battery-staple"


def _nav_labels(html: str) -> list[str]:
    nav = re.search(r'<nav class="main-nav" aria-label="Main">(.*?)</nav>', html, re.S)
    return re.findall(r"<a [^>]*>([^<]+)</a>", nav.group(1)) if nav else []


def _current_nav(html: str) -> list[str]:
    return re.findall(r'<a href="[^"]*" aria-current="page">([^<]+)</a>', html)


# --- landing page ---------------------------------------------------------------------------------------------


def test_home_sends_anonymous_visitors_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == "/login/"


CAB_SECTION, OPERATOR_SECTION = "Decisions due", "Rollouts waiting for an operator"
OVERSIGHT_SECTION, REQUESTER_SECTION = "Security events and overdue reviews", "Your change requests"


@pytest.mark.parametrize(
    ("role", "expected"),
    [
        (Role.REQUESTER, [REQUESTER_SECTION]),
        (Role.CAB_MEMBER, [CAB_SECTION]),
        (Role.SECURITY_OFFICER, [CAB_SECTION, OVERSIGHT_SECTION]),
        (Role.OPERATOR, [OPERATOR_SECTION]),
        (Role.AUDITOR, [OVERSIGHT_SECTION]),
    ],
)
def test_home_lists_what_needs_each_role(make_user, role, expected):
    user = make_user(role)
    response = page_client(user).get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert html.count("<h1>") == 1 and "Needs you now" in html
    headings = re.findall(r'<h2 id="home-[a-z]+">([^<]+)</h2>', html)
    assert headings == expected


def test_home_without_a_role_explains_what_to_do(make_user):
    response = page_client(make_user()).get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert "Your account has no role yet" in html
    assert _nav_labels(html) == []


# --- navigation -----------------------------------------------------------------------------------------------


def test_nav_for_requester_has_own_changes_but_no_cab_queue(requester):
    labels = _nav_labels(page_client(requester).get("/").content.decode())
    assert labels == ["Overview", "My changes", "New change", "Fleet", "KPIs"]


def test_nav_for_cab_member_has_cab_queue(cab_member):
    labels = _nav_labels(page_client(cab_member).get("/").content.decode())
    assert labels == ["Overview", "CAB queue", "Fleet", "KPIs", "Findings"]


def test_nav_for_operator_has_changes_and_rollouts(operator):
    labels = _nav_labels(page_client(operator).get("/").content.decode())
    assert labels == ["Overview", "Changes", "Rollouts", "Fleet", "KPIs", "Findings", "Alerts"]


def test_nav_for_auditor_and_security_officer_has_audit(auditor, security_officer):
    assert _nav_labels(page_client(auditor).get("/").content.decode()) == [
        "Overview",
        "Changes",
        "Rollouts",
        "Fleet",
        "KPIs",
        "Findings",
        "Alerts",
        "Audit",
        "Security",
    ]
    assert _nav_labels(page_client(security_officer).get("/").content.decode()) == [
        "Overview",
        "CAB queue",
        "Fleet",
        "KPIs",
        "Findings",
        "Alerts",
        "Audit",
        "Security",
    ]


def test_nav_marks_the_current_section(make_user):
    user = make_user(Role.REQUESTER, Role.CAB_MEMBER, Role.OPERATOR)
    client = page_client(user)
    assert _current_nav(client.get("/").content.decode()) == ["Overview"]
    # The login page is no section: nothing is marked.
    assert _current_nav(client.get("/logout/").content.decode()) == []


def test_nav_item_match_prefers_the_longest_path_and_matching_query(rf, make_user):
    from ota_project.web.nav import nav_items

    user = make_user(Role.REQUESTER, Role.CAB_MEMBER, Role.OPERATOR)

    def current(path: str) -> list[str]:
        request = rf.get(path)
        request.user = user
        return [item.label for item in nav_items(request) if item.current]

    assert current("/changes/new/") == ["New change"]
    assert current("/changes/?mine=1") == ["My changes"]
    assert current("/changes/") == ["CAB queue"]
    assert current("/changes/12/") == ["CAB queue"]
    assert current("/rollouts/kpis/") == ["KPIs"]
    assert current("/rollouts/3/") == ["Rollouts"]
    assert current("/admin/") == []


def test_layout_has_skip_link_first_user_roles_and_post_logout(operator):
    html = page_client(operator).get("/").content.decode()
    first_link = find_all(find(html, "body"), "a")[0]
    assert first_link.text() == "Skip to main content" and first_link.get("href") == "#main"
    assert find(html, "main").get("id") == "main"
    assert "olga-operator" in html and "Operator" in html
    assert re.search(r'<form method="post" action="/logout/">\s*<input type="hidden" name="csrfmiddlewaretoken"', html)
    assert "hx-headers" in html and "X-CSRFToken" in html
    assert "/static/ota/app.css" in html and "/static/ota/app.js" in html
    assert 'href="/api/docs/"' in html


def test_messages_are_shown_as_status_alerts(requester):
    client = page_client(requester)
    response = client.post("/logout/", follow=True)
    html = response.content.decode()
    (alert,) = find_all(find(html, id="messages"), role="status")
    assert visible_text(alert) == "You are signed out." and "alert-info" in alert.classes


# --- sign-in --------------------------------------------------------------------------------------------------


def test_login_page_has_labelled_fields_and_csrf(client):
    html = client.get("/login/").content.decode()
    assert '<label for="id_username">User name</label>' in html
    assert '<label for="id_password">Password</label>' in html
    assert 'name="csrfmiddlewaretoken"' in html
    assert html.count("<h1>") == 1


def test_sign_in_with_right_password_lands_on_overview(client, make_user):
    user = make_user(Role.OPERATOR, username="olaf", password=PASSWORD)
    response = client.post("/login/", {"username": "olaf", "password": PASSWORD})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.session[SESSION_KEY] == str(user.pk)


def test_sign_in_follows_next_but_not_to_other_sites(client, make_user):
    make_user(Role.OPERATOR, username="olaf", password=PASSWORD)
    response = client.post("/login/", {"username": "olaf", "password": PASSWORD, "next": "/fleet/"})
    assert response["Location"] == "/fleet/"
    client.logout()
    response = client.post("/login/", {"username": "olaf", "password": PASSWORD, "next": "https://evil.example/"})
    assert response["Location"] == "/"


def test_wrong_password_and_unknown_user_get_the_same_answer(client, make_user):
    make_user(Role.OPERATOR, username="olaf", password=PASSWORD)
    wrong = client.post("/login/", {"username": "olaf", "password": "nope"})
    unknown = client.post("/login/", {"username": "nobody", "password": "nope"})
    assert wrong.status_code == unknown.status_code == 200
    message = "That user name and password do not match."
    assert message in wrong.content.decode() and message in unknown.content.decode()
    assert SESSION_KEY not in client.session


def test_signed_in_user_visiting_login_is_sent_on(make_user):
    client = page_client(make_user(Role.OPERATOR))
    response = client.get("/login/")
    assert response.status_code == 302 and response["Location"] == "/"


def test_lockout_after_failure_limit_refuses_even_the_right_password(client, make_user, settings):
    settings.AXES_FAILURE_LIMIT = 3
    user = make_user(Role.OPERATOR, username="olaf", password=PASSWORD)
    for _ in range(2):
        assert client.post("/login/", {"username": "olaf", "password": "nope"}).status_code == 200
    locked = client.post("/login/", {"username": "olaf", "password": "nope"})
    html = locked.content.decode()
    assert locked.status_code == 429
    assert "Sign-in locked" in html and "is locked" in html and "15 minutes" in html
    again = client.post("/login/", {"username": "olaf", "password": PASSWORD})
    assert again.status_code == 429 and "is locked" in again.content.decode()
    assert SESSION_KEY not in client.session
    # Another user from the same address is not affected (lockout is per user name and address).
    make_user(Role.AUDITOR, username="alma", password=PASSWORD)
    other = client.post("/login/", {"username": "alma", "password": PASSWORD})
    assert other.status_code == 302
    assert client.session[SESSION_KEY] != str(user.pk)


def test_lockout_page_does_not_reveal_whether_the_user_exists(client, make_user, settings):
    settings.AXES_FAILURE_LIMIT = 2
    make_user(Role.OPERATOR, username="olaf", password=PASSWORD)
    pages = {}
    for name in ("olaf", "ghost"):
        for _ in range(2):
            response = client.post("/login/", {"username": name, "password": "nope"})
        assert response.status_code == 429
        pages[name] = re.sub(r'name="csrfmiddlewaretoken" value="[^"]+"', "", response.content.decode())
        pages[name] = re.sub(r'"X-CSRFToken": "[^"]+"', "", pages[name])
    assert pages["olaf"] == pages["ghost"]
    assert "olaf" not in pages["olaf"] and "ghost" not in pages["ghost"]


def test_login_page_lists_demo_users_only_in_demo_mode(client, make_user, settings):
    make_user(Role.CAB_MEMBER, Role.EMERGENCY_CAB, username="eddie", password=PASSWORD)
    make_user(Role.AUDITOR, username="anna", password=PASSWORD)
    make_user(username="norole", password=PASSWORD)
    settings.OTA_DEMO_MODE = False
    html = client.get("/login/").content.decode()
    assert "Demo users" not in html and "eddie" not in html

    settings.OTA_DEMO_MODE = True
    html = client.get("/login/").content.decode()
    assert "Demo users" in html
    assert row_cells(html, "eddie") == ["CAB member, Emergency CAB member"]
    assert row_cells(html, "anna") == ["Auditor (read-only)"]
    assert "norole" not in html
    assert "demo-credentials.txt" in html
    assert PASSWORD not in html


def test_demo_mode_without_users_says_how_to_create_them(client, settings):
    settings.OTA_DEMO_MODE = True
    html = client.get("/login/").content.decode()
    assert "No demo users yet" in html and "seed_demo" in html


# --- sign-out and CSRF ----------------------------------------------------------------------------------------


def test_logout_by_get_only_asks_and_keeps_the_session(requester):
    client = page_client(requester)
    response = client.get("/logout/")
    assert response.status_code == 200 and "Sign out of OTA change control" in response.content.decode()
    assert client.session[SESSION_KEY] == str(requester.pk)


def test_logout_by_post_ends_the_session(requester):
    client = page_client(requester)
    response = client.post("/logout/")
    assert response.status_code == 302 and response["Location"] == "/login/"
    assert SESSION_KEY not in client.session
    assert client.get("/")["Location"] == "/login/"


def test_post_without_csrf_token_is_refused(requester):
    client = Client(enforce_csrf_checks=True)
    client.force_login(requester)
    response = client.post("/logout/")
    assert response.status_code == 403
    assert client.session[SESSION_KEY] == str(requester.pk)


def test_login_without_csrf_token_is_refused(make_user):
    make_user(Role.OPERATOR, username="olaf", password=PASSWORD)
    client = Client(enforce_csrf_checks=True)
    response = client.post("/login/", {"username": "olaf", "password": PASSWORD})
    assert response.status_code == 403
    assert SESSION_KEY not in client.session


# --- error pages ----------------------------------------------------------------------------------------------


def test_unknown_page_uses_the_site_layout(requester):
    response = page_client(requester).get("/no-such-page/")
    html = response.content.decode()
    assert response.status_code == 404
    assert [heading.text() for heading in find_all(html, "h1")] == ["Not found"]
    find(html, "a", class_="skip-link")  # exactly one skip link: find fails the test otherwise
    assert "My changes" in visible_text(html)


def test_unknown_api_and_device_paths_stay_json(client):
    for path in ("/api/v1/nothing-here/", "/device/v1/nothing-here/"):
        response = client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


def test_server_error_is_json_for_api_and_a_page_elsewhere(requester):
    factory = RequestFactory()
    api = error_views.server_error(factory.get("/api/v1/changes/"))
    assert api.status_code == 500 and b'"server_error"' in api.content
    request = factory.get("/changes/")
    request.user = requester
    page = error_views.server_error(request)
    assert page.status_code == 500 and b"Something went wrong" in page.content and b"skip-link" in page.content


def test_server_error_page_falls_back_when_the_layout_fails(monkeypatch):
    def broken_render(*args, **kwargs):
        raise RuntimeError("database down")

    monkeypatch.setattr(error_views, "render", broken_render)
    response = error_views.server_error(RequestFactory().get("/changes/"))
    assert response.status_code == 500 and b"Something went wrong" in response.content


@pytest.mark.parametrize("path", ["/api/docs/", "/api/redoc/"])
def test_api_reference_pages_load_nothing_from_another_origin(client_for, operator, path):
    response = client_for(operator).get(path)
    html = response.content.decode()
    assert response.status_code == 200
    urls = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert urls, "the page loads its script"
    assert [url for url in urls if "://" in url or url.startswith("//")] == []
