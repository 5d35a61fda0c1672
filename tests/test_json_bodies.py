"""A JSON body with a duplicated key (at any depth) is a 400 naming the key on the management API; nothing is written."""

from __future__ import annotations

import json

import pytest

from approvals.audit.models import DecisionRecord
from approvals.models import ChangeRequest
from ota_project.parsers import JSONBodyError, json_loads_strict

CHANGES = "/api/v1/changes/"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('{"a": 1, "a": 2}', '"a"'),
        ('{"plan": {"waves": [{"name": "x", "name": "y"}]}}', '"name"'),
        ('[{"ok": 1}, {"k\\u00e9y": 1, "k\\u00e9y": 2}]', '"k\\u00e9y"'),
        ('{"\\ud800": 1, "\\ud800": 2}', '"\\ud800"'),
    ],
)
def test_duplicated_keys_are_refused_naming_the_key(text, key):
    with pytest.raises(JSONBodyError) as refused:
        json_loads_strict(text)
    assert str(refused.value) == f"the key {key} appears more than once in the same object"
    str(refused.value).encode("utf-8")  # safe to echo in an answer, even for a lone-surrogate key


def test_the_same_key_in_different_objects_is_fine():
    assert json_loads_strict('{"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}') == {"a": {"a": 1}, "b": [{"a": 2}, {"a": 3}]}


def _change_body(change_fields) -> dict:
    body = {
        **change_fields,
        "release": change_fields["release"].pk,
        "rollback_release": change_fields["rollback_release"].pk,
    }
    for name in ("requested_window_start", "requested_window_end"):
        body[name] = body[name].isoformat()
    return body


def test_the_body_without_duplicates_files_the_change(client_for, requester, change_fields):
    body = json.dumps(_change_body(change_fields))
    response = client_for(requester).generic("POST", CHANGES, body, content_type="application/json")
    assert response.status_code == 201, response.json()


@pytest.mark.parametrize("where", ["top", "nested"])
def test_a_duplicated_key_in_a_change_body_is_400_and_files_nothing(client_for, requester, change_fields, where):
    body = json.dumps(_change_body(change_fields))
    if where == "top":
        # The second title would silently win today.
        duplicated, key = body.replace('{"title": ', '{"title": "Harmless title", "title": ', 1), "title"
    else:
        duplicated = body.replace('"target_scope": {', '"target_scope": {"hardware_models": ["tcu-5g-r1"], ', 1)
        key = "hardware_models"
    assert duplicated != body
    before = DecisionRecord.objects.count()
    response = client_for(requester).generic("POST", CHANGES, duplicated, content_type="application/json")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "parse_error" and error["fields"] == {}
    assert error["message"] == f'JSON parse error - the key "{key}" appears more than once in the same object.'
    assert not ChangeRequest.objects.exists() and DecisionRecord.objects.count() == before


def test_a_duplicated_key_in_a_json_form_field_is_400_and_files_nothing(client_for, requester, change_fields):
    body = _change_body(change_fields)
    body["target_scope"] = '{"hardware_models": ["tcu-4g-r2"], "hardware_models": ["tcu-5g-r1"]}'
    body["rollout_plan"] = json.dumps(body["rollout_plan"])
    body["risk_answers"] = json.dumps(body["risk_answers"])
    response = client_for(requester).post(CHANGES, body, format="multipart")
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["fields"]["target_scope"] == [
        'Not valid JSON: the key "hardware_models" appears more than once in the same object.'
    ]
    assert not ChangeRequest.objects.exists()
