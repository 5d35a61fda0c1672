"""The auditor's API: role matrix, record browsing and filters, verify, signed export download, public key."""

import io
import zipfile
from datetime import timedelta
from urllib.parse import quote

import pytest
from django.utils import timezone

from approvals.audit.keys import audit_key_id
from approvals.audit.models import DecisionRecord
from approvals.audit.verify import audit_bundle_verify
from ota_project.roles import Role
from tests.audit.chain import append_records, tamper

pytestmark = pytest.mark.django_db

ENDPOINTS = [
    "/api/v1/audit/records/",
    "/api/v1/audit/records/1/",
    "/api/v1/audit/verify/",
    "/api/v1/audit/export/",
    "/api/v1/audit/public-key/",
]


def _body(response) -> bytes:
    return b"".join(response.streaming_content) if response.streaming else response.content


@pytest.mark.parametrize("path", ENDPOINTS)
def test_anonymous_callers_get_401(path, client_for):
    append_records(1)
    response = client_for(None).get(path)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"
    assert DecisionRecord.objects.count() == 1  # an export refused is not recorded


@pytest.mark.parametrize("role", [Role.REQUESTER, Role.OPERATOR, Role.CAB_MEMBER, Role.EMERGENCY_CAB])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_other_roles_get_403(path, role, make_user, client_for):
    append_records(1)
    response = client_for(make_user(role)).get(path)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert DecisionRecord.objects.count() == 1


def test_a_user_without_any_role_gets_403(make_user, client_for):
    assert client_for(make_user()).get("/api/v1/audit/records/").status_code == 403


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.SECURITY_OFFICER])
@pytest.mark.parametrize("path", ENDPOINTS)
def test_auditors_and_security_officers_get_200(path, role, make_user, client_for):
    append_records(1)
    assert client_for(make_user(role)).get(path).status_code == 200


@pytest.mark.parametrize("role", [Role.AUDITOR, Role.SECURITY_OFFICER])
@pytest.mark.parametrize("method", ["post", "put", "patch", "delete"])
def test_the_record_is_read_only_even_for_auditors(method, role, make_user, client_for):
    append_records(1)
    client = client_for(make_user(role))
    for path in ["/api/v1/audit/records/", "/api/v1/audit/records/1/", "/api/v1/audit/export/"]:
        assert getattr(client, method)(path, {}).status_code in (403, 405)
    assert list(DecisionRecord.objects.values_list("seq", "reason")) == [(1, "r")]


def test_unknown_seq_is_404(auditor, client_for):
    append_records(1)
    client = client_for(auditor)
    for seq in ["2", "0", str(2**63), str(10**40)]:
        response = client.get(f"/api/v1/audit/records/{seq}/")
        assert response.status_code == 404, seq
        assert response.json()["error"]["code"] == "not_found"


def test_record_detail_carries_every_hashed_field(auditor, client_for, requester):
    (record,) = append_records(1, actor=requester, revision=3)
    body = client_for(auditor).get("/api/v1/audit/records/1/").json()
    assert body == {
        "seq": 1,
        "created_at": record.created_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "actor": requester.username,
        "actor_id": requester.pk,
        "action": "test.step",
        "object_type": "test",
        "object_id": "0",
        "revision": 3,
        "before": None,
        "after": {"i": 0},
        "reason": "r",
        "prev_hash": record.prev_hash,
        "step_key": None,  # hashed only when set (a step that may run twice): shown so a hash can be recomputed
        "hash": record.hash,
    }


def test_record_list_is_paginated_in_chain_order(auditor, client_for):
    append_records(5)
    body = client_for(auditor).get("/api/v1/audit/records/?page_size=2&page=2").json()
    assert body["count"] == 5
    assert [row["seq"] for row in body["results"]] == [3, 4]


def test_record_list_filters(auditor, client_for, requester):
    append_records(3)
    append_records(2, actor=requester, action="change.submit", object_type="change_request", revision=2)
    middle = timezone.now()
    append_records(1, action="late.step")
    client = client_for(auditor)

    def seqs(query: str) -> list[int]:
        response = client.get(f"/api/v1/audit/records/?{query}")
        assert response.status_code == 200, response.json()
        return [row["seq"] for row in response.json()["results"]]

    assert seqs("action=change.submit") == [4, 5]
    assert seqs(f"actor={requester.username}") == [4, 5]
    assert seqs("actor=system:system") == [1, 2, 3, 6]
    assert seqs("object_type=change_request&object_id=1") == [5]
    assert seqs("revision=2") == [4, 5]
    assert seqs("from_seq=2&to_seq=4") == [2, 3, 4]
    assert seqs(f"since={quote(middle.isoformat())}") == [6]
    assert seqs(f"until={quote(middle.isoformat())}") == [1, 2, 3, 4, 5]
    assert seqs(f"since={quote((middle + timedelta(days=1)).isoformat())}") == []


@pytest.mark.parametrize(
    "query",
    [
        "from_seq=abc",
        "to_seq=1.5",
        "revision=-1",
        f"from_seq={2**63}",
        f"revision={2**31}",
        "since=yesterday",
        "until=2024-13-01T00:00:00Z",
        "since=9999-12-31T23:59:59-23:59",
        "action=a%00b",
    ],
)
def test_bad_list_filters_are_400_in_the_one_error_format(query, auditor, client_for):
    response = client_for(auditor).get(f"/api/v1/audit/records/?{query}")
    assert response.status_code == 400, response.content
    assert response.json()["error"]["code"] == "invalid"


def test_verify_reports_the_chain_ok(auditor, client_for):
    records = append_records(3)
    body = client_for(auditor).get("/api/v1/audit/verify/").json()
    assert body == {"ok": True, "length": 3, "broken_seq": None, "problem": "", "head_hash": records[-1].hash}


def test_verify_names_the_first_broken_link(security_officer, client_for):
    records = append_records(4)
    tamper("UPDATE approvals_decisionrecord SET reason = %s WHERE seq = %s", ["forged", 2])
    body = client_for(security_officer).get("/api/v1/audit/verify/").json()
    assert body["ok"] is False and body["broken_seq"] == 2 and body["head_hash"] == records[0].hash
    assert "altered" in body["problem"]


def test_public_key_can_be_pinned(auditor, client_for):
    body = client_for(auditor).get("/api/v1/audit/public-key/").json()
    assert body["algorithm"] == "ed25519" and body["key_id"] == audit_key_id()
    assert body["public_key_pem"].startswith("-----BEGIN PUBLIC KEY-----")


def test_export_downloads_a_zip_that_verifies_against_the_pinned_key_and_is_recorded(auditor, client_for):
    records = append_records(3)
    client = client_for(auditor)
    pinned_pem = client.get("/api/v1/audit/public-key/").json()["public_key_pem"]

    response = client.get("/api/v1/audit/export/?format=jsonl")

    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    assert response["Content-Disposition"].startswith('attachment; filename="decision-record-1-3-')
    bundle = _body(response)
    verdict = audit_bundle_verify(bundle, trusted_public_key_pem=pinned_pem)
    assert verdict.ok, verdict.problems
    assert verdict.record_count == 3 and verdict.head_hash == records[-1].hash
    assert verdict.manifest["exported_by"] == auditor.username
    export_record = DecisionRecord.objects.get(seq=4)
    assert export_record.action == "audit.export" and export_record.actor_id == auditor.pk
    assert response["X-Audit-Record-Seq"] == "4"
    assert response["X-Audit-Manifest-Sha256"] == export_record.object_id


def test_csv_export_of_a_range_verifies(security_officer, client_for):
    append_records(5)
    response = client_for(security_officer).get("/api/v1/audit/export/?format=csv&from_seq=2&to_seq=3")
    assert response.status_code == 200
    bundle = _body(response)
    assert "records.csv" in zipfile.ZipFile(io.BytesIO(bundle)).namelist()
    verdict = audit_bundle_verify(bundle)
    assert verdict.ok, verdict.problems
    assert verdict.manifest["filter"]["from_seq"] == 2 and verdict.record_count == 2


def test_export_ignores_the_accept_header(auditor, client_for):
    append_records(1)
    response = client_for(auditor).get("/api/v1/audit/export/", HTTP_ACCEPT="application/zip")
    assert response.status_code == 200 and response["Content-Type"] == "application/zip"


@pytest.mark.parametrize(
    "query",
    [
        "format=xml",
        "from_seq=abc",
        "from_seq=0",
        f"to_seq={2**63}",
        "from_seq=5&to_seq=2",
        "since=not-a-date",
        "since=2024-01-02T00:00:00Z&until=2024-01-01T00:00:00Z",
        "since=9999-12-31T23:59:59-23:59",
        "formats=csv",
    ],
)
def test_bad_export_params_are_400_and_nothing_is_recorded(query, auditor, client_for):
    append_records(2)
    response = client_for(auditor).get(f"/api/v1/audit/export/?{query}")
    assert response.status_code == 400, _body(response)
    assert response["Content-Type"] == "application/json"
    assert response.json()["error"]["code"] == "invalid"
    assert DecisionRecord.objects.count() == 2


def test_export_is_not_run_by_head_requests(auditor, client_for):
    append_records(1)
    assert client_for(auditor).head("/api/v1/audit/export/").status_code == 405
    assert DecisionRecord.objects.count() == 1


def test_schema_documents_the_audit_endpoints_and_the_zip_download(auditor, client_for):
    response = client_for(auditor).get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert response.status_code == 200
    schema = response.json()
    paths = schema["paths"]
    for path in ENDPOINTS:
        assert path.replace("/records/1/", "/records/{seq}/") in paths
    export = paths["/api/v1/audit/export/"]["get"]
    assert export["responses"]["200"]["content"]["application/zip"]["schema"] == {
        "type": "string",
        "format": "binary",
    }
    params = {p["name"]: p for p in export["parameters"]}
    assert params["format"]["schema"]["enum"] == ["jsonl", "csv"]
    assert params["from_seq"]["schema"]["type"] == "integer"
    record_params = {p["name"] for p in paths["/api/v1/audit/records/"]["get"]["parameters"]}
    assert {"action", "object_type", "object_id", "actor", "revision", "since", "until", "from_seq", "to_seq"} <= (
        record_params
    )
