"""The shared HTTP layer: retries, Retry-After, non-idempotent safety, error mapping, hooks."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import (
    AtlasError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    TransportError,
    UnauthorizedError,
    UnknownError,
)
from atlas_tasks.providers.base import ProviderContext, RequestInfo
from atlas_tasks.providers.http import (
    HttpClient,
    is_maybe_created,
    is_problem,
    is_timeout,
    parse_retry_after,
    problem_message,
    redact_url,
)
from atlas_tasks.providers.ratelimit import RateLimitWindow, parse_rate_limit

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(
    handler: Handler,
    *,
    hooks: tuple[Callable[[RequestInfo], None], ...] = (),
    retries: int = 3,
    max_backoff: float = 30.0,
    base_url: str = "https://api.example.test/v2",
) -> tuple[HttpClient, list[float]]:
    settings = AtlasSettings(http_max_retries=retries, http_max_backoff_s=max_backoff)
    ctx = ProviderContext(
        api_key="sekrit-key", settings=settings, transport=httpx.MockTransport(handler), hooks=hooks
    )
    sleeps: list[float] = []
    client = HttpClient(
        ctx,
        provider="runpod",
        api="management",
        base_url=base_url,
        headers={"Authorization": "Bearer sekrit-key"},
        sleep=sleeps.append,
    )
    client.rand = lambda: 0.0
    return client, sleeps


def sequence(*responses: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler answering with ``responses`` in order (exceptions are raised)."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen


def test_success_decodes_json_and_sends_auth_header() -> None:
    handler, seen = sequence(httpx.Response(200, json={"ok": True}))
    client, sleeps = make_client(handler)
    answer = client.call("GET", "/pods", params={"name": "x", "skip": None})
    assert answer.status == 200 and answer.data == {"ok": True}
    assert seen[0].headers["authorization"] == "Bearer sekrit-key"
    assert str(seen[0].url) == "https://api.example.test/v2/pods?name=x"
    assert sleeps == []


def test_empty_body_decodes_to_none() -> None:
    handler, _ = sequence(httpx.Response(204))
    client, _ = make_client(handler)
    assert client.call("DELETE", "/pods/a", expect=(204,)).data is None


def test_empty_path_is_the_base_url_itself() -> None:
    handler, seen = sequence(httpx.Response(200, json={}))
    client, _ = make_client(handler, base_url="https://api.example.test/graphql")
    client.call("POST", "", json={"query": "q"}, idempotent=True)
    assert str(seen[0].url) == "https://api.example.test/graphql"


def test_401_maps_to_unauthorized_with_exatlas_rendering() -> None:
    handler, seen = sequence(httpx.Response(401, json={"error": "bad key"}))
    client, _ = make_client(handler)
    with pytest.raises(UnauthorizedError) as info:
        client.call("GET", "/pods")
    assert str(info.value) == "[runpod] unauthorized (HTTP 401): bad key"
    assert info.value.kind == "unauthorized" and info.value.status == 401
    assert len(seen) == 1  # 4xx other than 408/429 is never retried


def test_404_maps_to_not_found() -> None:
    handler, _ = sequence(httpx.Response(404, text="Pod not found."))
    client, _ = make_client(handler)
    with pytest.raises(NotFoundError) as info:
        client.call("GET", "/pods/x")
    assert info.value.message == "Pod not found."


def test_429_honours_retry_after_seconds() -> None:
    handler, seen = sequence(
        httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow down"}),
        httpx.Response(200, json=[]),
    )
    client, sleeps = make_client(handler)
    assert client.call("GET", "/pods").data == []
    assert sleeps == [7.0]
    assert len(seen) == 2


def test_retry_after_http_date_and_cap() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=20), usegmt=True)
    handler, _ = sequence(
        httpx.Response(503, headers={"Retry-After": when}),
        httpx.Response(429, headers={"Retry-After": "3600"}),
        httpx.Response(200, json={}),
    )
    client, sleeps = make_client(handler, max_backoff=10.0)
    client.call("GET", "/x")
    assert len(sleeps) == 2
    assert sleeps[0] == 10.0  # ~20 s from the date, capped at http_max_backoff_s
    assert sleeps[1] == 10.0  # an hour, capped


def test_5xx_backs_off_exponentially_then_succeeds() -> None:
    handler, seen = sequence(
        httpx.Response(502),
        httpx.Response(503),
        httpx.Response(504),
        httpx.Response(200, json={"id": "p"}),
    )
    client, sleeps = make_client(handler)
    assert client.call("GET", "/pods/p").data == {"id": "p"}
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(seen) == 4


def test_backoff_has_jitter_and_cap() -> None:
    handler, _ = sequence(httpx.Response(200))
    client, _ = make_client(handler, max_backoff=5.0)
    client.rand = lambda: 0.999
    assert 2.0 < client.backoff_delay(2) <= 2.5
    assert client.backoff_delay(10) == 5.0


def test_retries_exhausted_raise_the_last_status() -> None:
    handler, seen = sequence(httpx.Response(500, json={"message": "boom"}))
    client, sleeps = make_client(handler, retries=2)
    with pytest.raises(ProviderError) as info:
        client.call("GET", "/pods")
    assert info.value.status == 500 and info.value.message == "boom"
    assert len(seen) == 3 and len(sleeps) == 2
    assert not is_maybe_created(info.value)


def test_429_exhausted_is_rate_limited() -> None:
    handler, seen = sequence(httpx.Response(429, headers={"Retry-After": "0"}))
    client, _ = make_client(handler, retries=1)
    with pytest.raises(RateLimitedError):
        client.call("GET", "/pods")
    assert len(seen) == 2


def test_non_idempotent_post_is_not_retried_on_5xx() -> None:
    handler, seen = sequence(
        httpx.Response(500, json={"error": "oops"}), httpx.Response(201, json={"id": "dup"})
    )
    client, sleeps = make_client(handler)
    with pytest.raises(ProviderError) as info:
        client.call("POST", "/pods", json={"name": "a"}, expect=(201,))
    assert is_maybe_created(info.value)
    assert len(seen) == 1 and sleeps == []


def test_non_idempotent_post_is_retried_on_429_and_connect_errors() -> None:
    handler, seen = sequence(
        httpx.Response(429, headers={"Retry-After": "1"}),
        httpx.ConnectError("refused"),
        httpx.Response(201, json={"id": "p1"}),
    )
    client, sleeps = make_client(handler)
    assert client.call("POST", "/pods", json={}, expect=(201,)).data == {"id": "p1"}
    assert len(seen) == 3 and sleeps == [1.0, 2.0]


def test_non_idempotent_read_timeout_may_have_created() -> None:
    handler, seen = sequence(httpx.ReadTimeout("slow"))
    client, _ = make_client(handler)
    with pytest.raises(TransportError) as info:
        client.call("POST", "/pods", json={}, expect=(201,))
    assert is_maybe_created(info.value) and is_timeout(info.value)
    assert len(seen) == 1


def test_post_marked_idempotent_is_retried() -> None:
    handler, seen = sequence(httpx.Response(500), httpx.Response(200, json={}))
    client, _ = make_client(handler)
    client.call("POST", "/pods/a/stop", idempotent=True)
    assert len(seen) == 2


def test_malformed_json_is_a_provider_error() -> None:
    handler, _ = sequence(httpx.Response(200, text="<html>oops"))
    client, _ = make_client(handler)
    with pytest.raises(ProviderError) as info:
        client.call("GET", "/pods")
    assert "malformed JSON from runpod management GET /pods" in str(info.value)
    assert info.value.status == 200


def test_unexpected_2xx_is_unknown() -> None:
    handler, _ = sequence(httpx.Response(202, json={}))
    client, _ = make_client(handler)
    with pytest.raises(UnknownError):
        client.call("POST", "/pods", expect=(201,))


def test_transport_error_after_retries_is_transport_kind() -> None:
    handler, seen = sequence(httpx.ConnectError("connection refused"))
    client, sleeps = make_client(handler, retries=2)
    with pytest.raises(TransportError) as info:
        client.call("GET", "/pods")
    assert info.value.kind == "transport"
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert "connection refused" in str(info.value)
    assert len(seen) == 3 and len(sleeps) == 2


def test_hooks_receive_every_attempt() -> None:
    events: list[RequestInfo] = []
    handler, _ = sequence(
        httpx.ReadError("reset"), httpx.Response(503), httpx.Response(200, json={})
    )
    client, _ = make_client(handler, hooks=(events.append,))
    client.call("GET", "/pods", params={"api_key": "leak"})
    assert [e.attempt for e in events] == [1, 2, 3]
    assert [e.status for e in events] == [None, 503, 200]
    assert events[0].error is not None and "ReadError" in events[0].error
    assert all(
        e.provider == "runpod" and e.api == "management" and e.method == "GET" for e in events
    )
    assert all("leak" not in e.url and "api_key=REDACTED" in e.url for e in events)
    assert all(e.duration_s >= 0 for e in events)


def test_broken_hook_does_not_fail_the_call() -> None:
    def bad_hook(info: RequestInfo) -> None:
        raise RuntimeError("metrics down")

    handler, _ = sequence(httpx.Response(200, json={"ok": 1}))
    client, _ = make_client(handler, hooks=(bad_hook,))
    assert client.call("GET", "/x").data == {"ok": 1}


def test_debug_log_never_contains_key_or_body(caplog: pytest.LogCaptureFixture) -> None:
    handler, _ = sequence(httpx.Response(200, json={"secret_body": "s3cr3t"}))
    client, _ = make_client(handler)
    with caplog.at_level(logging.DEBUG, logger="atlas_tasks.providers.http"):
        client.call("POST", "/pods", json={"env": {"TOKEN": "tok"}}, expect=(200,))
    text = caplog.text
    assert "POST https://api.example.test/v2/pods" in text
    assert "sekrit-key" not in text and "s3cr3t" not in text and 'tok"' not in text
    assert "sekrit-key" not in repr(client)


def test_redact_url() -> None:
    assert (
        redact_url("https://x/graphql?api_key=abc&y=1") == "https://x/graphql?api_key=REDACTED&y=1"
    )
    assert redact_url("https://x/a?q=1&token=zz") == "https://x/a?q=1&token=REDACTED"
    assert redact_url("https://x/a?q=1") == "https://x/a?q=1"


def test_parse_retry_after() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    assert parse_retry_after("5") == 5.0
    assert parse_retry_after("1.5") == 1.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    later = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(later, now=now) == 30.0
    earlier = format_datetime(now - timedelta(seconds=30), usegmt=True)
    assert parse_retry_after(earlier, now=now) == 0.0


def test_pooled_client_is_shared_across_threads_and_reopens_after_close() -> None:
    handler, _ = sequence(httpx.Response(200, json={}))
    client, _ = make_client(handler)
    seen: list[httpx.Client] = []
    lock = threading.Lock()

    def grab() -> None:
        c = client.client
        with lock:
            seen.append(c)

    threads = [threading.Thread(target=grab) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(c) for c in seen}) == 1
    client.close()
    client.close()  # idempotent
    assert client.client is not seen[0]
    assert client.call("GET", "/x").status == 200


def test_every_error_is_an_atlas_error() -> None:
    for response in (httpx.Response(418), httpx.Response(403), httpx.Response(408)):
        handler, _ = sequence(response)
        client, _ = make_client(handler, retries=0)
        with pytest.raises(AtlasError):
            client.call("GET", "/x")


def test_bad_base_url_is_a_transport_error_without_retry() -> None:
    handler, seen = sequence(httpx.Response(200))
    settings = AtlasSettings(http_max_retries=3)
    ctx = ProviderContext(api_key="k", settings=settings)  # real transport: never reached
    sleeps: list[float] = []
    client = HttpClient(
        ctx, provider="runpod", api="management", base_url="api.runpod.io", sleep=sleeps.append
    )
    with pytest.raises(TransportError):
        client.call("POST", "/pods", json={})
    assert sleeps == [] and seen == []


# ------------------------------------------------------------------ RFC 9457 problems
def problem_response(
    status: int, body: dict[str, object], media: str = "application/problem+json"
) -> httpx.Response:
    return httpx.Response(
        status, content=json.dumps(body).encode(), headers={"content-type": media}
    )


def test_problem_body_becomes_an_atlas_error_with_detail_and_errors() -> None:
    body = {
        "title": "Unprocessable Entity",
        "status": 422,
        "detail": "Request validation failed.",
        "errors": ["$: additional properties 'bogus' not allowed", "$.gpu.count: >= 1"],
    }
    handler, _ = sequence(problem_response(422, body))
    client, _ = make_client(handler)
    with pytest.raises(ProviderError) as info:
        client.call("POST", "/pods", json={})
    assert info.value.status == 422 and info.value.raw == body
    assert info.value.message == (
        "Request validation failed.: $: additional properties "
        "'bogus' not allowed; $.gpu.count: >= 1"
    )


def test_problem_kinds_follow_the_status() -> None:
    handler, _ = sequence(
        problem_response(404, {"title": "Not Found", "status": 404, "detail": "pod not found"})
    )
    client, _ = make_client(handler)
    with pytest.raises(NotFoundError) as info:
        client.call("GET", "/pods/x")
    assert str(info.value) == "[runpod] not_found (HTTP 404): pod not found"


def test_problem_recognised_by_shape_and_title_fallback() -> None:
    # Served as plain JSON, but shaped like a problem; no detail: the title is the message.
    handler, _ = sequence(
        problem_response(409, {"title": "Conflict", "status": 409}, media="application/json")
    )
    client, _ = make_client(handler)
    with pytest.raises(ProviderError) as info:
        client.call("POST", "/pods/x/action", json={"action": "stop"})
    assert info.value.message == "Conflict"
    assert is_problem({"title": "t", "status": 400})
    assert not is_problem({"error": "x", "status": 400})
    assert not is_problem({"title": "t", "status": True})
    assert not is_problem(["title"])
    many = {"detail": "bad", "errors": [f"e{i}" for i in range(12)]}
    assert problem_message(many).endswith("e9; and 2 more")


@pytest.mark.parametrize("status", [400, 500])
def test_deeply_nested_json_is_a_provider_error_never_recursion(status: int) -> None:
    deep = "[" * 100_000
    handler, _ = sequence(
        httpx.Response(200, text=deep),
        httpx.Response(status, text=deep),
        httpx.Response(status, text="{" + '"a":' * 50_000),
    )
    client, _ = make_client(handler, retries=0)
    with pytest.raises(ProviderError) as ok_answer:
        client.call("GET", "/pods")
    assert "malformed JSON" in str(ok_answer.value)
    for _ in range(2):
        with pytest.raises(AtlasError) as error_answer:
            client.call("GET", "/pods")
        assert error_answer.value.status == status
        assert "malformed body" in str(error_answer.value)
        assert len(str(error_answer.value.raw)) <= 500


def test_non_json_error_text_is_kept() -> None:
    handler, _ = sequence(httpx.Response(502, text="<html>Bad Gateway</html>"))
    client, _ = make_client(handler, retries=0)
    with pytest.raises(ProviderError) as info:
        client.call("GET", "/pods")
    assert info.value.message == "<html>Bad Gateway</html>"


# ------------------------------------------------------------------ RateLimit headers
def test_rate_limit_headers_reach_the_hooks() -> None:
    headers = {
        "RateLimit": '"minute";r=0;t=12, "hour";r=2800;t=1812, "day";r=49500;t=45012',
        "RateLimit-Policy": '"minute";q=60;w=60, "hour";q=3000;w=3600, "day";q=50000;w=86400',
    }
    events: list[RequestInfo] = []
    handler, _ = sequence(
        httpx.Response(200, json={}, headers=headers), httpx.Response(200, json={})
    )
    client, _ = make_client(handler, hooks=(events.append,))
    client.call("GET", "/pods")
    client.call("GET", "/pods")
    limit = events[0].rate_limit
    assert limit is not None and limit.windows == (
        RateLimitWindow("minute", remaining=0, reset_s=12, quota=60, window_s=60),
        RateLimitWindow("hour", remaining=2800, reset_s=1812, quota=3000, window_s=3600),
        RateLimitWindow("day", remaining=49500, reset_s=45012, quota=50000, window_s=86400),
    )
    assert limit.exhausted and limit.reset_after_s == 12
    assert events[1].rate_limit is None  # no headers, no limit


@pytest.mark.parametrize(
    ("limit", "policy", "expected"),
    [
        (None, None, None),
        ("", "  ", None),
        ("garbage;;", None, None),
        ('"minute";r=5;t=3', None, (RateLimitWindow("minute", remaining=5, reset_s=3),)),
        (None, '"day";q=10;w=86400', (RateLimitWindow("day", quota=10, window_s=86400),)),
        (
            '"minute";r=1;t=2;x="s", ("a" "b")',
            None,
            (RateLimitWindow("minute", remaining=1, reset_s=2),),
        ),
    ],
)
def test_parse_rate_limit_edge_cases(
    limit: str | None, policy: str | None, expected: tuple[RateLimitWindow, ...] | None
) -> None:
    parsed = parse_rate_limit(limit, policy)
    assert (parsed.windows if parsed else None) == expected
    if parsed is not None:
        assert not parsed.exhausted and parsed.reset_after_s is None
        assert parsed.window("nope") is None
