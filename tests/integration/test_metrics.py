"""``/metrics`` on a real cluster (redis-server, worker, beat, fake cloud): scraped over
HTTP and parsed with Prometheus's own text parser while sessions run, fail and end."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from atlas_tasks import orchestrator
from atlas_tasks.errors import AtlasError
from atlas_tasks.metrics import metrics_wsgi_app, observe_sessions, render_metrics
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass


@pytest.fixture
def scrape(cluster: LocalCluster) -> Iterator[Callable[[], Samples]]:
    """Serve ``metrics_wsgi_app()`` over HTTP and return a function that scrapes it."""
    server: WSGIServer = make_server("127.0.0.1", 0, metrics_wsgi_app(), handler_class=_Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}/metrics"

    def get() -> Samples:
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        out: Samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                out[(sample.name, frozenset(sample.labels.items()))] = sample.value
        return out

    yield get
    server.shutdown()
    server.server_close()


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of a sample over every series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def _wait(
    scrape: Callable[[], Samples],
    check: Callable[[Samples], bool],
    what: str,
    timeout: float = 30.0,
) -> Samples:
    deadline = time.monotonic() + timeout
    samples = scrape()
    while not check(samples):
        if time.monotonic() > deadline:
            interesting = {k: v for k, v in samples.items() if k[0].startswith("atlas_")}
            raise AssertionError(f"metrics never showed {what}: {interesting}")
        time.sleep(0.2)
        samples = scrape()
    return samples


def test_metrics_follow_sessions_through_their_life(
    cluster: LocalCluster, scrape: Callable[[], Samples]
) -> None:
    before = scrape()
    assert _value(before, "atlas_redis_up") == 1
    spawned0 = _value(before, "atlas_spawns_total", provider="runpod", outcome="running")
    requests0 = _total(before, "atlas_provider_request_duration_seconds_count", provider="runpod")
    # One 429 on the first create: the HTTP layer retries it and the hook sees it.
    cluster.cloud.fail_next("POST /pods", 429, retry_after=0)

    keep = [
        orchestrator.spawn(provider="runpod", gpu="h100", image="acme/x:1", idle_ttl_ms=120_000)
        for _ in range(2)
    ]
    idle = orchestrator.spawn(provider="runpod", gpu="h100", image="acme/x:1", idle_ttl_ms=1_500)
    for s in [*keep, idle]:
        s.wait(timeout=30)

    running = _wait(
        scrape,
        lambda m: (
            _value(m, "atlas_spawns_total", provider="runpod", outcome="running") >= spawned0 + 3
        ),
        "three successful spawns",
    )
    assert _value(running, "atlas_sessions", provider="runpod", status="running") >= 2
    assert _value(running, "atlas_spawn_latency_seconds_count", provider="runpod") >= 3
    assert _value(running, "atlas_spawn_latency_seconds_bucket", provider="runpod", le="+Inf") >= 3
    assert (
        _total(running, "atlas_provider_request_duration_seconds_count", provider="runpod")
        > requests0
    )
    assert (
        _total(
            running,
            "atlas_provider_request_duration_seconds_count",
            provider="runpod",
            status="429",
        )
        >= 1
    )
    assert _total(running, "atlas_provider_rate_limited_total", provider="runpod") >= 1
    # beat sweeps every second: the age drops from +Inf (never) to seconds
    swept = _wait(
        scrape, lambda m: _value(m, "atlas_reaper_last_sweep_age_seconds") < 10, "a recent sweep"
    )
    assert _value(swept, "atlas_reaper_sweeps_total") >= 1
    usd_running = _value(running, "atlas_accrued_usd_total", provider="runpod")
    assert usd_running > 0  # the fake cloud prices its pods

    # An explicit stop and an idle timeout end one session each.
    orchestrator.stop_tracked(keep[0].id)
    ended = _wait(
        scrape,
        lambda m: (
            _value(m, "atlas_terminates_total", provider="runpod", reason="requested") >= 1
            and _value(m, "atlas_terminates_total", provider="runpod", reason="idle_timeout") >= 1
        ),
        "a requested and an idle termination",
    )
    assert _value(ended, "atlas_idle_reap_lag_seconds_count", provider="runpod") >= 1
    assert (
        _value(ended, "atlas_sessions", provider="runpod", status="running")
        == _value(running, "atlas_sessions", provider="runpod", status="running") - 2
    )
    assert _value(ended, "atlas_accrued_usd_total", provider="runpod") >= usd_running

    # A spawn the provider refuses (a 4xx is not retried) counts as a failure, by kind.
    cluster.cloud.fail_next("POST /pods", 400)
    bad = orchestrator.spawn(provider="runpod", gpu="h100", image="acme/x:1", idle_ttl_ms=60_000)
    with pytest.raises(AtlasError):
        bad.wait(timeout=30)
    failed = _wait(
        scrape,
        lambda m: _value(m, "atlas_spawns_total", provider="runpod", outcome="failed") >= 1,
        "a failed spawn",
    )
    assert _total(failed, "atlas_spawn_failures_total", provider="runpod") >= 1
    # Counted once per session, however many times the worker looked at it.
    assert (
        _value(failed, "atlas_spawns_total", provider="runpod", outcome="running") == spawned0 + 3
    )
    orchestrator.stop_tracked(keep[1].id)


def test_metrics_report_redis_down(cluster: LocalCluster) -> None:

    body, content_type = render_metrics(get_redis("redis://127.0.0.1:1/0"))
    samples = {
        s.name: s.value for f in text_string_to_metric_families(body.decode()) for s in f.samples
    }
    assert content_type.startswith("text/plain")
    assert samples == {"atlas_redis_up": 0.0}


def test_metrics_count_terminate_retries_and_orphans(
    cluster: LocalCluster, scrape: Callable[[], Samples]
) -> None:
    import atlas_tasks as atlas

    before = scrape()
    s = orchestrator.spawn(provider="runpod", gpu="h100", image="acme/x:1", idle_ttl_ms=120_000)
    s.wait(timeout=30)
    # Every HTTP attempt of the first terminate fails (1 + 3 retries): the task retries.
    cluster.cloud.fail_next("DELETE /pods/*", 500, times=4)
    orchestrator.stop_tracked(s.id)
    after = _wait(
        scrape,
        lambda m: (
            _value(m, "atlas_terminates_total", provider="runpod", reason="requested")
            > _value(before, "atlas_terminates_total", provider="runpod", reason="requested")
        ),
        "the retried terminate",
    )
    assert _value(after, "atlas_terminate_retries_total") > _value(
        before, "atlas_terminate_retries_total"
    )
    assert (
        _total(
            after, "atlas_provider_request_duration_seconds_count", provider="runpod", status="500"
        )
        >= 4
    )

    # A prefixed pod nobody tracks: the reaper's orphan scan terminates it.
    atlas.spawn_compute(
        provider="runpod", gpu="h100", image="acme/x:1", name="atlas-orphan0metrics"
    )
    orphaned = _wait(
        scrape,
        lambda m: (
            _value(m, "atlas_orphans_reaped_total", provider="runpod")
            > _value(before, "atlas_orphans_reaped_total", provider="runpod")
        ),
        "the orphan reaped",
        timeout=60,
    )
    assert _value(orphaned, "atlas_reaper_orphans_found_total") >= 1


def test_session_transitions_are_counted_once(cluster: LocalCluster) -> None:
    # The recording script's arithmetic, on a database of its own (Lua needs real Redis).
    r = get_redis(cluster.redis_url.rsplit("/", 1)[0] + "/7")
    r.flushdb()
    r.hset(
        "atlas:session:a",
        mapping={
            "status": "terminated",
            "provider": "runpod",
            "created_at_ms": 1_000,
            "running_at_ms": 3_000,
            "terminating_at_ms": 3_600_000,
            "ended_at_ms": 3_603_000,
            "reason": "idle_timeout",
            "compute": '{"cost_per_hour": 2.0}',
        },
    )
    r.hset(
        "atlas:session:b",
        mapping={
            "status": "failed",
            "provider": "vast",
            "created_at_ms": 1_000,
            "error": '{"kind": "validation"}',
        },
    )
    assert observe_sessions(["a", "b", "gone"], client=r) == 3
    assert observe_sessions(["a", "b"], client=r) == 0  # already counted
    assert not r.exists("atlas:session:gone")  # never resurrects an expired record
    body, _ = render_metrics(r)
    s = {
        (x.name, frozenset(x.labels.items())): x.value
        for f in text_string_to_metric_families(body.decode())
        for x in f.samples
    }
    assert (
        s[("atlas_spawns_total", frozenset({("provider", "runpod"), ("outcome", "running")}))] == 1
    )
    assert s[("atlas_spawns_total", frozenset({("provider", "vast"), ("outcome", "failed")}))] == 1
    assert (
        s[("atlas_spawn_failures_total", frozenset({("provider", "vast"), ("kind", "validation")}))]
        == 1
    )
    assert (
        s[
            (
                "atlas_terminates_total",
                frozenset({("provider", "runpod"), ("reason", "idle_timeout")}),
            )
        ]
        == 1
    )
    assert s[("atlas_spawn_latency_seconds_sum", frozenset({("provider", "runpod")}))] == 2.0
    assert (
        s[
            (
                "atlas_idle_reap_lag_seconds_bucket",
                frozenset({("provider", "runpod"), ("le", "2.0")}),
            )
        ]
        == 0
    )
    assert (
        s[
            (
                "atlas_idle_reap_lag_seconds_bucket",
                frozenset({("provider", "runpod"), ("le", "5.0")}),
            )
        ]
        == 1
    )
    # 2 $/h for 3600 s of running
    assert abs(s[("atlas_accrued_usd_total", frozenset({("provider", "runpod")}))] - 2.0) < 1e-9
