"""Unknown API paths answer in the API's error format."""

import pytest

pytestmark = pytest.mark.django_db


def test_unknown_api_path_is_json_404(client):
    response = client.get("/api/v1/no-such-thing/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_unknown_page_is_html_404(client):
    response = client.get("/no-such-page/")
    assert response.status_code == 404 and b"Not found" in response.content


@pytest.mark.parametrize("path", ["/api/v1/changes/", "/api/v1/scope/preview/", "/api/v1/risk/preview/"])
def test_absurdly_nested_json_is_400_not_500(client_for, requester, path):
    body = "[" * 50_000 + "]" * 50_000
    response = client_for(requester).generic("POST", path, body, content_type="application/json")
    assert response.status_code == 400 and response.json()["error"]["code"] == "parse_error"


def test_oversized_body_is_413(client_for, requester, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024
    body = '{"title": "' + "x" * 4096 + '"}'
    response = client_for(requester).generic("POST", "/api/v1/changes/", body, content_type="application/json")
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"
