"""The Fly logs API client (httpx.MockTransport): wire format, 401 re-fetch, no retries."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import ProviderError, TransportError, UnauthorizedError
from atlas_tasks.fly.logs import LogsClient, parse_logs_document
from atlas_tasks.fly.token_storage import MemoryTokenStorage, TokenRecord
from atlas_tasks.fly.tokens import FlyTokens

DOC = {
    "data": [
        {
            "id": "a1",
            "type": "logs",
            "attributes": {
                "timestamp": "2026-01-01T00:00:00.000000001Z",
                "message": "hello",
                "level": "info",
                "instance": "148e21ea7e5189",
                "region": "cdg",
                "meta": {"event": {"provider": "app"}},
            },
        },
        {"id": "a2", "type": "logs", "attributes": {"message": "no timestamp"}},
        "garbage",
        {
            "id": "a3",
            "type": "logs",
            "attributes": {
                "timestamp": "2026-01-01T00:00:01Z",
                "message": "world",
                "level": "error",
            },
        },
    ],
    "meta": {"next_token": "1767225601000000000"},
}


def make_client(
    tmp_path: Path,
    handler: httpx.MockTransport,
    *,
    stored: str | None = "tok-1",
    env: str | None = None,
) -> tuple[LogsClient, FlyTokens]:
    storage = MemoryTokenStorage()
    if stored:
        storage.put("api", "cached", TokenRecord(stored, int(time.time()) + 3600))
    settings = AtlasSettings(
        fly_api_url="https://api.fly.test",
        fly_executable="no-fly-here",
        fly_config_file=str(tmp_path / "none.yml"),
        fly_api_token=env,
    )
    tokens = FlyTokens(storage, settings=settings, cluster_lock=False)
    return LogsClient(tokens=tokens, settings=settings, transport=handler), tokens


def test_parse_document_flattens_and_skips_malformed_items() -> None:
    page = parse_logs_document(DOC, "api")
    assert [(e.id, e.message, e.level) for e in page.entries] == [
        ("a1", "hello", "info"),
        ("a3", "world", "error"),
    ]
    first = page.entries[0]
    assert (first.instance, first.region, first.app) == ("148e21ea7e5189", "cdg", "api")
    assert first.meta == {"event": {"provider": "app"}}
    assert page.next_token == "1767225601000000000"
    assert parse_logs_document({"data": [], "meta": {}}).next_token is None
    bad: object
    for bad in ([], {"meta": {}}, "text", None):
        with pytest.raises(ProviderError):
            parse_logs_document(bad)


def test_request_shape(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=DOC)

    client, _ = make_client(tmp_path, httpx.MockTransport(handler))
    page = client.fetch("api", next_token="123", region="cdg", instance="m1")
    assert len(page.entries) == 2
    client.fetch("api")
    first, second = seen
    assert first.url.path == "/api/v1/apps/api/logs"
    assert dict(first.url.params) == {"next_token": "123", "region": "cdg", "instance": "m1"}
    assert first.headers["authorization"] == "Bearer tok-1"
    assert str(second.url) == "https://api.fly.test/api/v1/apps/api/logs"  # no empty params


def test_401_refreshes_the_token_and_fetches_once_more(tmp_path: Path) -> None:
    tokens_seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        tokens_seen.append(request.headers["authorization"])
        if request.headers["authorization"] != "Bearer fresh":
            return httpx.Response(401, json={"error": "unauthorized"})
        return httpx.Response(200, json=DOC)

    client, tokens = make_client(tmp_path, httpx.MockTransport(handler), env="fresh")
    page = client.fetch("api")
    assert len(page.entries) == 2
    assert tokens_seen == ["Bearer tok-1", "Bearer fresh"]
    assert tokens.storage.get("api", "cached") is None  # the rejected token was dropped
    # the next call uses the refreshed token straight away
    client.fetch("api")
    assert tokens_seen[-1] == "Bearer fresh" and len(tokens_seen) == 3


def test_second_401_is_returned_as_is(tmp_path: Path) -> None:
    count = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return httpx.Response(401, json={"error": "bad token"})

    client, _ = make_client(tmp_path, httpx.MockTransport(handler), env="also-bad")
    with pytest.raises(UnauthorizedError) as info:
        client.fetch("api")
    assert count == 2
    assert info.value.status == 401 and info.value.provider == "fly"


def test_no_token_available_makes_no_request(tmp_path: Path) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("no request expected")

    client, _ = make_client(tmp_path, httpx.MockTransport(handler), stored=None)
    with pytest.raises(UnauthorizedError) as info:
        client.fetch("api")
    assert "no_token_available" in str(info.value)


def test_server_errors_and_transport_failures_are_not_retried(tmp_path: Path) -> None:
    count = 0

    def failing(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        return httpx.Response(503, json={"error": "overloaded"})

    client, _ = make_client(tmp_path, httpx.MockTransport(failing))
    with pytest.raises(ProviderError) as info:
        client.fetch("api")
    assert count == 1 and info.value.status == 503

    def refused(request: httpx.Request) -> httpx.Response:
        nonlocal count
        count += 1
        raise httpx.ConnectError("connection refused", request=request)

    count = 0
    client, _ = make_client(tmp_path, httpx.MockTransport(refused))
    with pytest.raises(TransportError):
        client.fetch("api")
    assert count == 1


def test_malformed_json_is_a_provider_error(tmp_path: Path) -> None:
    client, _ = make_client(
        tmp_path, httpx.MockTransport(lambda request: httpx.Response(200, text="{not json"))
    )
    with pytest.raises(ProviderError):
        client.fetch("api")


def test_client_repr_and_errors_never_show_the_token(tmp_path: Path) -> None:
    client, _ = make_client(
        tmp_path, httpx.MockTransport(lambda request: httpx.Response(500, text="oops"))
    )
    with pytest.raises(ProviderError) as info:
        client.fetch("api")
    assert "tok-1" not in str(info.value) and "tok-1" not in repr(client._http)
    client.close()
