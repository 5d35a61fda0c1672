"""People and alerts: who reads them, who acknowledges and resolves them (recorded), who is refused (403 + event)."""

from __future__ import annotations

import pytest

from approvals.audit.choices import SecurityEventKind
from approvals.audit.models import DecisionRecord, SecurityEvent
from ota_project.alerts.choices import AlertStatus
from ota_project.alerts.models import Alert
from ota_project.alerts.services import raise_alert
from tests.web.helpers import page_client

pytestmark = pytest.mark.django_db

API = "/api/v1/alerts/"


@pytest.fixture
def alert() -> Alert:
    return raise_alert(
        kind="device.quarantined",
        dedup_key="device.quarantined:TCU1",
        title="Device TCU1 quarantined after 3 failed installs",
        summary="It gets no offer until an operator releases it.",
        link="/fleet/devices/TCU1/",
        evidence={"failed_installs": 3, "release": "1.1.0"},
    )


def test_operators_security_officers_and_auditors_read_alerts(alert, client_for, operator, security_officer, auditor):
    for person in (operator, security_officer, auditor):
        answer = client_for(person).get(API)
        assert answer.status_code == 200
        assert [row["id"] for row in answer.json()["results"]] == [alert.pk]
        assert answer.json()["results"][0]["evidence"] == {"failed_installs": 3, "release": "1.1.0"}


def test_people_without_an_alert_role_cannot_read_them(alert, client_for, cab_member, requester):
    for person in (cab_member, requester, None):
        assert client_for(person).get(API).status_code in (401, 403)


def test_an_operator_acknowledges_with_a_decision_record(alert, client_for, operator):
    answer = client_for(operator).post(f"{API}{alert.pk}/acknowledge/", {"note": "on it"}, format="json")
    assert answer.status_code == 200
    assert answer.json()["status"] == AlertStatus.ACKNOWLEDGED and answer.json()["acknowledged_by"] == operator.username
    record = DecisionRecord.objects.get(action="alert.acknowledge")
    assert (record.actor, record.object_id, record.reason) == (operator, str(alert.pk), "on it")
    assert record.before == {"status": "open"} and (record.after or {}).get("status") == "acknowledged"
    # A repeated click changes and records nothing.
    assert client_for(operator).post(f"{API}{alert.pk}/acknowledge/", {}, format="json").status_code == 200
    assert DecisionRecord.objects.filter(action="alert.acknowledge").count() == 1


def test_resolving_needs_a_note_and_is_recorded(alert, client_for, security_officer):
    refused = client_for(security_officer).post(f"{API}{alert.pk}/resolve/", {"note": ""}, format="json")
    assert refused.status_code == 400 and "note" in refused.json()["error"]["fields"]
    alert.refresh_from_db()
    assert alert.status == AlertStatus.OPEN
    answer = client_for(security_officer).post(
        f"{API}{alert.pk}/resolve/", {"note": "replaced the modem"}, format="json"
    )
    assert answer.status_code == 200 and answer.json()["status"] == AlertStatus.RESOLVED
    assert DecisionRecord.objects.filter(action="alert.resolve", actor=security_officer).count() == 1
    # A resolved alert is over: acknowledging it now is a conflict, not a silent change.
    late = client_for(security_officer).post(f"{API}{alert.pk}/acknowledge/", {}, format="json")
    assert late.status_code == 409


@pytest.mark.parametrize("role_fixture", ["auditor", "cab_member", "requester"])
def test_people_who_may_not_act_are_refused_with_a_security_event(alert, client_for, request, role_fixture):
    person = request.getfixturevalue(role_fixture)
    answer = client_for(person).post(f"{API}{alert.pk}/acknowledge/", {"note": "mine"}, format="json")
    assert answer.status_code == 403
    alert.refresh_from_db()
    assert alert.status == AlertStatus.OPEN and alert.acknowledged_by is None
    assert not DecisionRecord.objects.filter(action__startswith="alert.").exists()
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.ACTION_UNAUTHORISED).exists()


def test_bad_note_and_unknown_alert_answer_400_and_404(alert, client_for, operator):
    client = client_for(operator)
    too_long = client.post(f"{API}{alert.pk}/acknowledge/", {"note": "x" * 1001}, format="json")
    assert too_long.status_code == 400 and "note" in too_long.json()["error"]["fields"]
    not_text = client.post(f"{API}{alert.pk}/acknowledge/", {"note": {"a": 1}}, format="json")
    assert not_text.status_code == 400
    assert client.post(f"{API}999999/acknowledge/", {}, format="json").status_code == 404
    assert client.post(f"{API}abc/acknowledge/", {}, format="json").status_code == 404
    assert Alert.objects.get(pk=alert.pk).status == AlertStatus.OPEN


def test_the_alerts_page_lists_links_and_counts_open_alerts_in_the_nav(alert, operator, cab_member):
    body = page_client(operator).get("/alerts/").content.decode()
    assert alert.title in body and 'href="/fleet/devices/TCU1/"' in body and f"/alerts/{alert.pk}/" in body
    assert "1 open" in body  # the navigation's count
    detail = page_client(operator).get(f"/alerts/{alert.pk}/").content.decode()
    assert "failed_installs" in detail and "Acknowledge" in detail
    assert page_client(cab_member).get("/alerts/").status_code == 403


def test_an_operator_acknowledges_on_the_page_and_the_nav_count_drops(alert, operator):
    client = page_client(operator)
    answer = client.post(f"/alerts/{alert.pk}/acknowledge/", {"note": "looking"}, follow=True)
    assert answer.status_code == 200 and "acknowledged" in answer.content.decode().lower()
    assert DecisionRecord.objects.filter(action="alert.acknowledge", actor=operator).exists()
    assert "1 open" not in client.get("/alerts/").content.decode()


def test_an_auditor_sees_the_page_but_cannot_post_an_acknowledgement(alert, auditor):
    client = page_client(auditor)
    detail = client.get(f"/alerts/{alert.pk}/").content.decode()
    assert "Only operators and security officers" in detail
    assert client.post(f"/alerts/{alert.pk}/acknowledge/", {"note": "x"}).status_code == 403
    assert Alert.objects.get(pk=alert.pk).status == AlertStatus.OPEN
    assert SecurityEvent.objects.filter(kind=SecurityEventKind.ACTION_UNAUTHORISED).exists()
