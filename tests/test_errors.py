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
