"""Audit pages: who may open them, record filters, one record, chain verification intact and broken, exports."""

from __future__ import annotations

import io
import zipfile
from datetime import timedelta

import pytest
from django.http import StreamingHttpResponse
from django.urls import reverse
from django.utils import timezone

from approvals.audit.models import DecisionRecord
from approvals.audit.verify import audit_bundle_verify
from ota_project.roles import Role
from tests.audit.chain import append_records, tamper
from tests.support.html import find, visible_text
from tests.web.helpers import page_client

pytestmark = pytest.mark.django_db

RECORDS = reverse("web-audit:records")
VERIFY = reverse("web-audit:verify")
AUDIT_ROLES = (Role.AUDITOR, Role.SECURITY_OFFICER)
OTHER_ROLES = [role for role in Role.values if role not in AUDIT_ROLES]


def _seqs(response) -> list[int]:
    return [row["record"].seq for row in response.context["rows"]]


@pytest.fixture
def chain(db):
    """Five records from two actors about two object types, plus three device records."""
    alice = append_records(3, action="change.submit", object_type="change")
    bob = append_records(2, action="approval.approved", object_type="approval")
    devices = append_records(3, action="devices.device.quarantine", object_type="device")
    return alice + bob + devices


# --- Access ----------------------------------------------------------------------------------------------------


def test_anonymous_is_sent_to_sign_in(chain):
    for response in (
        page_client().get(RECORDS),
        page_client().post(VERIFY),
        page_client().get(reverse("web-audit:record", args=[1])),
    ):
        assert response.status_code == 302
        assert response["Location"].startswith("/login/?next=")


@pytest.mark.parametrize("role", OTHER_ROLES)
def test_other_roles_get_403(chain, make_user, role):
    client = page_client(make_user(role))
    response = client.get(RECORDS)
    assert response.status_code == 403
    assert "Auditor (read-only) or Security officer role" in response.content.decode()
    assert client.get(reverse("web-audit:record", args=[1])).status_code == 403
    assert client.post(VERIFY).status_code == 403


def test_user_without_a_role_gets_403(chain, nobody):
    assert page_client(nobody).get(RECORDS).status_code == 403


@pytest.mark.parametrize("role", AUDIT_ROLES)
def test_auditors_and_security_officers_read_the_record(chain, make_user, role):
    response = page_client(make_user(role)).get(RECORDS)
    assert response.status_code == 200
    assert _seqs(response) == list(range(8, 0, -1))  # newest first
    body = response.content.decode()
    first = chain[0]
    assert f'href="{reverse("web-audit:record", args=[first.seq])}"' in body
    assert first.hash[:10] in body


# --- Filters ---------------------------------------------------------------------------------------------------


def test_filter_by_action_object_and_actor(chain, auditor):
    client = page_client(auditor)
    assert _seqs(client.get(RECORDS, {"action": "approval.approved"})) == [5, 4]
    assert _seqs(client.get(RECORDS, {"object_type": "device", "object_id": "1"})) == [7]
    assert _seqs(client.get(RECORDS, {"actor": "system:system"})) == list(range(8, 0, -1))
    empty = client.get(RECORDS, {"actor": "mallory"})
    assert _seqs(empty) == []
    assert "No record matches these filters." in empty.content.decode()


def test_filter_by_date_range(chain, auditor):
    old = chain[0]
    tamper(
        "UPDATE approvals_decisionrecord SET created_at = %s WHERE seq = %s",
        [timezone.now() - timedelta(days=10), old.seq],
    )
    today = timezone.now().date()
    client = page_client(auditor)
    assert _seqs(client.get(RECORDS, {"date_from": today.isoformat()})) == list(range(8, 1, -1))
    earlier = (today - timedelta(days=10)).isoformat()
    assert _seqs(client.get(RECORDS, {"date_from": earlier, "date_to": earlier})) == [1]


def test_invalid_filters_are_form_errors(chain, auditor):
    response = page_client(auditor).get(RECORDS, {"date_from": "2024-05-02", "date_to": "2024-05-01", "action": "nope"})
    assert response.status_code == 200
    assert response.context["page"] is None
    assert set(response.context["form"].errors) == {"date_to", "action"}
    body = response.content.decode()
    assert "Must not be before the From day." in body
    assert "These filters cannot be applied." in body
    assert "Download CSV" not in body
    garbage = page_client(auditor).get(RECORDS, {"date_from": "yesterday-ish", "date_to": "9999-12-31"})
    assert set(garbage.context["form"].errors) == {"date_from", "date_to"}


def test_records_are_paginated(db, auditor):
    append_records(60)
    client = page_client(auditor)
    first = client.get(RECORDS)
    assert _seqs(first) == list(range(60, 10, -1))
    assert _seqs(client.get(RECORDS, {"page": 2})) == list(range(10, 0, -1))


# --- One record ------------------------------------------------------------------------------------------------


def test_record_page_shows_hash_links_and_content(chain, security_officer):
    record = chain[3]
    response = page_client(security_officer).get(reverse("web-audit:record", args=[record.seq]))
    body = response.content.decode()
    assert response.status_code == 200
    assert record.hash in body and record.prev_hash in body
    assert reverse("web-audit:record", args=[record.seq - 1]) in body
    assert reverse("web-audit:record", args=[record.seq + 1]) in body
    assert "The content of this record matches its hash." in body


def test_record_page_flags_an_altered_record(chain, auditor):
    tamper("UPDATE approvals_decisionrecord SET reason = %s WHERE seq = %s", ["rewritten", 2])
    body = page_client(auditor).get(reverse("web-audit:record", args=[2])).content.decode()
    assert "does not match its hash" in body


@pytest.mark.parametrize("seq", [999, 2**63, 10**30])
def test_unknown_record_is_404(chain, auditor, seq):
    assert page_client(auditor).get(f"/audit/records/{seq}/").status_code == 404


# --- Chain verification ----------------------------------------------------------------------------------------


def test_verify_chain_reports_an_intact_chain(chain, auditor):
    client = page_client(auditor)
    assert "has not been verified in this session" in client.get(RECORDS).content.decode()
    response = client.post(VERIFY, {"next": RECORDS + "?action=change.submit"})
    assert response.status_code == 302
    assert response["Location"] == RECORDS + "?action=change.submit"
    body = client.get(RECORDS).content.decode()
    assert "Intact: 8 records, head" in body
    assert chain[-1].hash[:14] in body
    assert "Verify chain" in body


def test_verify_chain_over_htmx_returns_the_status_fragment(chain, auditor):
    response = page_client(auditor).post(VERIFY, HTTP_HX_REQUEST="true")
    assert response.status_code == 200
    body = response.content.decode()
    assert body.lstrip().startswith('<div id="chain-status"')
    assert "Intact: 8 records" in body
    assert "<html" not in body


def test_verify_chain_reports_where_it_is_broken(chain, auditor):
    tamper("UPDATE approvals_decisionrecord SET reason = %s WHERE seq = %s", ["rewritten", 4])
    client = page_client(auditor)
    client.post(VERIFY)
    body = client.get(RECORDS).content.decode()
    alert = visible_text(find(body, class_="error-state"))
    assert "Broken at record #4" in alert
    assert "content does not match its hash" in visible_text(body)
    assert reverse("web-audit:record", args=[4]) in body


def test_verify_chain_ignores_an_off_site_next(chain, auditor):
    response = page_client(auditor).post(VERIFY, {"next": "https://evil.example/"})
    assert response["Location"].startswith(RECORDS)


def test_verify_is_post_only(chain, auditor):
    assert page_client(auditor).get(VERIFY).status_code == 405


# --- Exports ---------------------------------------------------------------------------------------------------


def _export_href(body: str, label: str) -> str:
    start = body.index(label)
    href_at = body.rindex('href="', 0, start) + len('href="')
    return body[href_at : body.index('"', href_at)].replace("&amp;", "&")


@pytest.mark.parametrize(("label", "member"), [("Download CSV", "records.csv"), ("Download JSONL", "records.jsonl")])
def test_export_links_download_a_signed_bundle(chain, auditor, label, member):
    client = page_client(auditor)
    body = client.get(RECORDS).content.decode()
    href = _export_href(body, label)
    assert href.startswith(reverse("api:audit-export"))
    response = client.get(href)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert "attachment" in response["Content-Disposition"]
    assert isinstance(response, StreamingHttpResponse)  # the bundle is streamed
    data = response.getvalue()
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        assert {"manifest.json", "manifest.sig", "audit_public_key.pem", "checkpoints.jsonl", member} == set(
            archive.namelist()
        )
    verdict = audit_bundle_verify(data)
    assert verdict.ok, verdict.problems
    assert verdict.record_count == 8
    # The download is itself recorded, by the auditor.
    last = DecisionRecord.objects.order_by("-seq").first()
    assert last is not None and last.action == "audit.export"


def test_export_links_carry_the_date_range(chain, auditor):
    day = timezone.now().date()
    body = (
        page_client(auditor)
        .get(RECORDS, {"date_from": day.isoformat(), "date_to": day.isoformat(), "action": "change.submit"})
        .content.decode()
    )
    href = _export_href(body, "Download JSONL")
    assert f"since={day.isoformat()}T00%3A00%3A00Z" in href
    assert f"until={(day + timedelta(days=1)).isoformat()}T00%3A00%3A00Z" in href
    assert "Action, actor and object filters do not apply to exports" in body
    response = page_client(auditor).get(href)
    assert isinstance(response, StreamingHttpResponse)
    verdict = audit_bundle_verify(response.getvalue())
    assert verdict.ok and verdict.record_count == 8
    assert verdict.manifest["filter"]["since"].startswith(day.isoformat())


@pytest.mark.parametrize("role", OTHER_ROLES)
def test_other_roles_cannot_download_exports(chain, make_user, role):
    count = DecisionRecord.objects.count()
    response = page_client(make_user(role)).get(reverse("api:audit-export") + "?format=csv")
    assert response.status_code == 403
    assert DecisionRecord.objects.count() == count


# --- Vehicle search --------------------------------------------------------------------------------------------


def test_audit_page_has_a_vehicle_register_search(chain, auditor):
    body = page_client(auditor).get(RECORDS).content.decode()
    assert f'action="{reverse("web-trace:vehicle-lookup")}"' in body
    assert 'name="serial"' in body


def test_empty_record_has_a_designed_empty_state(db, auditor):
    body = page_client(auditor).get(RECORDS).content.decode()
    assert "The decision record is empty" in body
