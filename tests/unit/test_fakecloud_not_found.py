"""A request to a path the fake cloud does not serve says what was asked and what exists."""

from __future__ import annotations

from starlette.testclient import TestClient

from atlas_tasks.testing.fakecloud import DEFAULT_API_KEY, create_app


def test_unknown_path_names_method_url_and_provider_prefixes() -> None:
    client = TestClient(create_app())
    response = client.post("/v1/pods", json={})  # a base URL missing its /runpod prefix
    assert response.status_code == 404
    body = response.json()
    assert body["method"] == "POST" and body["url"].endswith("/v1/pods")
    assert {"/runpod", "/lambda", "/vast", "/fly"} <= set(body["prefixes"])
    assert "POST" in body["message"] and "/v1/pods" in body["message"]
    assert "/runpod" in body["message"]


def test_known_resources_keep_their_provider_style_404() -> None:
    client = TestClient(create_app())
    missing = client.get("/runpod/v1/pods/nope",
                         headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"})
    assert missing.status_code == 404
    assert "prefixes" not in missing.json()
