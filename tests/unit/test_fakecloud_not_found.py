"""A request to a path the fake cloud does not serve says what was asked and what exists
(the real server over HTTP, in a thread)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from atlas_tasks.testing.fakecloud import DEFAULT_API_KEY, FakeCloud


@pytest.fixture(scope="module")
def cloud() -> Iterator[FakeCloud]:
    with FakeCloud() as cloud:
        yield cloud


def test_unknown_path_names_method_url_and_provider_prefixes(cloud: FakeCloud) -> None:
    # A base URL missing its /runpod prefix.
    response = httpx.post(f"{cloud.url}/v2/pods", json={}, timeout=10)
    assert response.status_code == 404
    body = response.json()
    assert body["method"] == "POST" and body["url"] == f"{cloud.url}/v2/pods"
    assert {"/runpod", "/lambda", "/vast", "/fly"} <= set(body["prefixes"])
    assert f"POST {cloud.url}/v2/pods" in body["message"] and "/runpod" in body["message"]


def test_known_resources_keep_their_provider_style_404(cloud: FakeCloud) -> None:
    missing = httpx.get(
        f"{cloud.runpod_rest_url}/v2/pods/nope",
        timeout=10,
        headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
    )
    assert missing.status_code == 404
    assert "prefixes" not in missing.json()
