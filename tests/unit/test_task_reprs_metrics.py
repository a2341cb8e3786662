"""The task repr helper (context yes, secrets never) and the metrics recorders' Redis
arithmetic, on fakeredis (the real-cluster test is tests/integration/test_metrics.py)."""

from __future__ import annotations

import fakeredis
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atlas_tasks import metrics, task_reprs
from atlas_tasks.config import reset_settings
from atlas_tasks.providers.base import RequestInfo


def test_spawn_repr_shows_context_and_hides_the_payload() -> None:
    reprs = task_reprs.spawn("abc123", provider="runpod", gpu="h100", user_id={"u": 42})
    assert reprs["argsrepr"] == "('abc123', '<sealed>')"
    for context in ("abc123", "runpod", "h100", '{"u": 42}'):
        assert context in reprs["kwargsrepr"]


def test_reprs_cut_long_values_and_drop_empty_ones() -> None:
    reprs = task_reprs.spawn("s1", user_id="x" * 500, gpu=None)
    assert "x" * task_reprs.MAX_VALUE_CHARS not in reprs["kwargsrepr"]
    assert "gpu" not in reprs["kwargsrepr"]
    batch = task_reprs.terminate_batch([f"s{i}" for i in range(40)], "idle_timeout")
    assert "+35 more" in batch["argsrepr"] and "'sessions': 40" in batch["kwargsrepr"]
    orphan = task_reprs.terminate_orphan("vast", "123", "atlas-s1")
    assert "orphan" in orphan["kwargsrepr"] and "vast" in orphan["argsrepr"]


def _samples(r: fakeredis.FakeRedis) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    body, _ = metrics.render_metrics(r)
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for f in text_string_to_metric_families(body.decode())
        for s in f.samples
    }


def test_request_hook_buckets_latency_and_counts_429s() -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    for status, seconds in ((200, 0.004), (200, 0.3), (429, 0.02), (None, 31.0)):
        metrics.record_request(
            RequestInfo(
                provider="runpod",
                api="management",
                method="GET",
                url="http://x",
                status=status,
                duration_s=seconds,
                attempt=1,
            ),
            client=r,
        )
    s = _samples(r)
    ok = {("provider", "runpod"), ("api", "management"), ("status", "200")}
    assert (
        s[("atlas_provider_request_duration_seconds_bucket", frozenset(ok | {("le", "0.005")}))]
        == 1
    )
    assert (
        s[("atlas_provider_request_duration_seconds_bucket", frozenset(ok | {("le", "0.5")}))] == 2
    )
    assert s[("atlas_provider_request_duration_seconds_count", frozenset(ok))] == 2
    assert abs(s[("atlas_provider_request_duration_seconds_sum", frozenset(ok))] - 0.304) < 1e-6
    error = frozenset(
        {("provider", "runpod"), ("api", "management"), ("status", "error"), ("le", "30.0")}
    )
    assert s[("atlas_provider_request_duration_seconds_bucket", error)] == 0  # 31 s: +Inf
    assert (
        s[
            (
                "atlas_provider_rate_limited_total",
                frozenset({("provider", "runpod"), ("api", "management")}),
            )
        ]
        == 1
    )
    assert s[("atlas_redis_up", frozenset())] == 1
    assert s[("atlas_reaper_last_sweep_age_seconds", frozenset())] == float("inf")


def test_asgi_and_wsgi_apps_serve_the_same_scrape() -> None:
    import asyncio

    import httpx
    from starlette.applications import Starlette
    from starlette.routing import Mount

    r = fakeredis.FakeRedis(decode_responses=True)
    metrics.incr("orphans_reaped", "vast", client=r)
    app = Starlette(routes=[Mount("/metrics", app=metrics.metrics_asgi_app(r))])

    async def get() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ops") as client:
            return await client.get("/metrics/")

    response = asyncio.run(get())
    assert response.status_code == 200
    assert 'atlas_orphans_reaped_total{provider="vast"} 1.0' in response.text

    seen: list[str] = []
    body = b"".join(
        metrics.metrics_wsgi_app(r)(
            {"REQUEST_METHOD": "GET", "PATH_INFO": "/metrics", "QUERY_STRING": ""},
            lambda status, headers: seen.append(status),
        )
    )
    assert seen == ["200 OK"]
    assert b'atlas_orphans_reaped_total{provider="vast"} 1.0' in body


def test_postrun_counts_retries_failures_and_orphans(monkeypatch: pytest.MonkeyPatch) -> None:
    r = fakeredis.FakeRedis(decode_responses=True)
    monkeypatch.setattr(metrics, "get_redis", lambda *a: r)
    monkeypatch.setattr(metrics, "observe_sessions", lambda ids, client=None: 0)  # Lua
    r.hset("atlas:session:s1", "provider", "lambda_labs")

    def task(name: str) -> object:
        return type("T", (), {"name": name})()

    metrics.on_task_postrun(task("atlas.compute.terminate"), ("s1", "requested"), None, "RETRY")
    metrics.on_task_postrun(
        task("atlas.compute.terminate"),
        ("s1", "requested"),
        {"outcome": "terminate_failed"},
        "SUCCESS",
    )
    metrics.on_task_postrun(
        task("atlas.compute.terminate_batch"),
        (["s1", "s2"], "idle"),
        {"outcomes": {"retrying": 2}},
        "SUCCESS",
    )
    metrics.on_task_postrun(
        task("atlas.compute.terminate_orphan"),
        ("vast", "9", None),
        {"outcome": "terminated"},
        "SUCCESS",
    )
    metrics.on_task_postrun(
        task("atlas.compute.terminate_orphan"),
        ("vast", "9", None),
        {"outcome": "fenced"},
        "SUCCESS",
    )
    metrics.on_task_postrun(task("atlas.reaper.reap"), (), {}, "SUCCESS")  # not ours
    monkeypatch.setenv("ATLAS_METRICS", "0")
    reset_settings()  # settings are read once per process
    metrics.on_task_postrun(task("atlas.compute.terminate"), ("s1", "requested"), None, "RETRY")
    assert r.hgetall("atlas:metrics:c:terminate_retries") == {"": "3"}
    assert r.hgetall("atlas:metrics:c:terminate_failures") == {"lambda_labs": "1"}
    assert r.hgetall("atlas:metrics:c:orphans_reaped") == {"vast": "1"}
