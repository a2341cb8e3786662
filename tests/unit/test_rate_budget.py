"""The fleet rate budget (atlas_tasks.providers.budget) against a real redis-server (its
Lua reads Redis ``TIME``), and its wiring into the HTTP layer."""

from __future__ import annotations

import time

import httpx
import pytest
import redis

from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import RateLimitedError
from atlas_tasks.providers.base import ProviderContext
from atlas_tasks.providers.budget import (
    ApiClass,
    RateBudget,
    budget_for,
    classify,
    fingerprint,
    policy_size,
)
from atlas_tasks.providers.http import HttpClient
from atlas_tasks.providers.ratelimit import parse_rate_limit

pytestmark = pytest.mark.integration


@pytest.fixture
def client(redis_client: redis.Redis) -> redis.Redis:
    return redis_client


def _budget(
    client: redis.Redis,
    *,
    per_minute: float = 60.0,
    burst: int | None = 10,
    max_wait_s: float = 60.0,
    key: str = "k",
) -> RateBudget:
    return RateBudget(
        client,
        provider="runpod",
        api="management",
        key_fingerprint=fingerprint(key),
        per_minute=per_minute,
        burst=burst,
        max_wait_s=max_wait_s,
        rand=lambda: 0.0,
    )


def test_classify_terminate_spawn_read() -> None:
    assert classify("DELETE", "/pods/x") is ApiClass.TERMINATE
    assert classify("POST", "/pods/x/action", {"action": "terminate"}) is ApiClass.TERMINATE
    assert classify("POST", "/instance-operations/terminate", {}) is ApiClass.TERMINATE
    assert classify("POST", "/pods/x/action", {"action": "stop"}) is ApiClass.SPAWN
    assert classify("POST", "/pods", {"name": "a"}) is ApiClass.SPAWN
    assert classify("GET", "/catalog/gpus") is ApiClass.READ
    assert classify("GET", "/catalog/gpus/NVIDIA%20H100") is ApiClass.READ
    assert classify("GET", "/instance-types") is ApiClass.READ
    # The GET of one resource is a spawn's (or a stop's) status poll, not a list.
    assert classify("GET", "/pods/xedezhzb9la3ye") is ApiClass.SPAWN
    assert classify("get", "/pods") is ApiClass.READ


def test_fingerprint_hides_the_key(client: redis.Redis) -> None:
    budget = _budget(client, key="secret-api-key")
    assert "secret-api-key" not in budget.key
    assert budget.key == f"atlas:ratebudget:runpod:management:{fingerprint('secret-api-key')}"
    assert "secret" not in repr(budget)


def test_burst_then_wait_with_priorities(client: redis.Redis) -> None:
    # 10 tokens, refill 1/s. Reads must leave 2.5, spawns 1, terminates take the last.
    budget = _budget(client, per_minute=60, burst=10)
    granted_reads = 0
    while budget.try_acquire(ApiClass.READ) == 0:
        granted_reads += 1
    assert granted_reads == 7
    granted_spawns = 0
    while budget.try_acquire(ApiClass.SPAWN) == 0:
        granted_spawns += 1
    assert granted_spawns == 2
    granted_terminates = 0
    while budget.try_acquire(ApiClass.TERMINATE) == 0:
        granted_terminates += 1
    assert granted_terminates == 1
    # Empty bucket: a terminate waits about one refill (1 s), a read about 3.5.
    assert 0 < budget.try_acquire(ApiClass.TERMINATE) <= 1000
    assert 3000 <= budget.try_acquire(ApiClass.READ) <= 3600


def test_one_token_bucket_has_no_priorities(client: redis.Redis) -> None:
    budget = _budget(client, per_minute=60, burst=1)
    assert budget.try_acquire(ApiClass.READ) == 0  # a read is not starved forever
    assert budget.try_acquire(ApiClass.TERMINATE) > 0


def test_429_pauses_every_holder_of_the_key(client: redis.Redis) -> None:
    one, other = _budget(client), _budget(client)
    one.observe(status=429, retry_after_s=7)
    wait = other.try_acquire(ApiClass.TERMINATE)
    assert 6000 < wait <= 7000
    assert other.state()["pause_ms"] > 6000
    # A shorter pause never shortens a longer one.
    other.observe(status=429, retry_after_s=1)
    assert other.try_acquire(ApiClass.TERMINATE) > 6000
    # Another key is not paused.
    assert _budget(client, key="other-key").try_acquire(ApiClass.READ) == 0


def test_policy_sizes_the_bucket_and_remaining_drains_it(client: redis.Redis) -> None:
    budget = _budget(client, per_minute=6000, burst=None)
    limit = parse_rate_limit(
        '"minute";r=3;t=20, "hour";r=2800;t=1812', '"minute";q=60;w=60, "hour";q=3000;w=3600'
    )
    # Refill at the hour's pace, room for the minute's quota (or less when configured).
    assert policy_size(limit, None) == pytest.approx((3000 / 3_600_000, 60))
    assert policy_size(limit, 10) == pytest.approx((3000 / 3_600_000, 10))
    assert policy_size(parse_rate_limit('"minute";r=3;t=2', None), None) is None
    budget.observe(status=200, rate_limit=limit)
    state = budget.state()
    assert state["rate"] == pytest.approx(3000 / 3_600_000)
    assert state["cap"] == 60
    assert state["tokens"] <= 3.01
    # Terminates may take what is left (3), then everyone waits.
    taken = sum(1 for _ in range(5) if budget.try_acquire(ApiClass.TERMINATE) == 0)
    assert taken == 3


def test_a_resize_keeps_the_bucket_as_full_as_it_was(client: redis.Redis) -> None:
    budget = _budget(client, per_minute=60, burst=None)  # 60 tokens from settings
    assert budget.try_acquire(ApiClass.READ) == 0  # 59 left: nearly full
    budget.observe(
        status=200,
        rate_limit=parse_rate_limit('"minute";r=599;t=59', '"minute";q=600;w=60'),
    )
    state = budget.state()
    assert state["cap"] == 600
    assert 589 <= state["tokens"] <= 599  # scaled to the provider's size, not stuck at 59
    # Drained to what the provider says is left, and full again once its window resets.
    low = parse_rate_limit('"minute";r=4;t=1', '"minute";q=600;w=60')
    budget.observe(status=200, rate_limit=low)
    assert budget.state()["tokens"] == 4
    # A higher count within the same window does not refill the bucket (pacing goes on)...
    same = parse_rate_limit('"minute";r=40;t=1', '"minute";q=600;w=60')
    budget.observe(status=200, rate_limit=same)
    assert budget.state()["tokens"] < 10
    # ...but once that window has reset (t=1 s), the fresh window's count does.
    time.sleep(1.1)  # waiting for the provider's window itself to pass
    fresh = parse_rate_limit('"minute";r=599;t=60', '"minute";q=600;w=60')
    budget.observe(status=200, rate_limit=fresh)
    assert budget.state()["tokens"] == 599


def test_exhausted_window_pauses_until_its_reset(client: redis.Redis) -> None:
    budget = _budget(client)
    budget.observe(
        status=200, rate_limit=parse_rate_limit('"minute";r=0;t=12', '"minute";q=60;w=60')
    )
    assert 11_000 < budget.try_acquire(ApiClass.TERMINATE) <= 12_000


def test_acquire_sleeps_then_raises_after_max_wait(client: redis.Redis) -> None:
    now = [0.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    budget = RateBudget(
        client,
        provider="runpod",
        api="management",
        key_fingerprint=fingerprint("k"),
        per_minute=60,
        burst=1,
        max_wait_s=3.0,
        monotonic=lambda: now[0],
        rand=lambda: 0.0,
    )
    budget.observe(status=429, retry_after_s=30)
    with pytest.raises(RateLimitedError) as info:
        budget.acquire(ApiClass.TERMINATE, sleep=sleep)
    assert info.value.kind == "rate_limited"
    assert "ATLAS_RATE_BUDGET_MAX_WAIT_S" in str(info.value)
    assert sleeps and sum(sleeps) == pytest.approx(3.0)


def test_budget_for_respects_settings() -> None:
    off = ProviderContext(api_key="k", settings=AtlasSettings(rate_budget=False))
    assert budget_for(off, provider="runpod", api="management") is None
    mock = httpx.MockTransport(lambda request: httpx.Response(200))
    on = AtlasSettings(rate_budget=True, rate_budget_per_minute={"default": 30.0})
    in_process = ProviderContext(api_key="k", settings=on, transport=mock)
    assert budget_for(in_process, provider="runpod", api="management") is None
    network = ProviderContext(api_key="k", settings=on)
    budget = budget_for(network, provider="runpod", api="management")
    assert budget is not None
    assert budget.default_rate == pytest.approx(30 / 60_000)


def _http(client: redis.Redis, handler: httpx.MockTransport) -> HttpClient:
    settings = AtlasSettings(rate_budget=True, rate_budget_in_process=True, http_max_retries=2)
    ctx = ProviderContext(api_key="k", settings=settings, transport=handler)
    http = HttpClient(
        ctx, provider="runpod", api="management", base_url="http://fake", sleep=lambda s: None
    )
    http.budget = _budget(client)
    return http


def test_http_client_feeds_a_429_to_the_fleet(client: redis.Redis) -> None:
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "1"}),
            httpx.Response(
                200,
                json={"ok": True},
                headers={
                    "RateLimit": '"minute";r=41;t=30',
                    "RateLimit-Policy": '"minute";q=60;w=60',
                },
            ),
        ]
    )
    http = _http(client, httpx.MockTransport(lambda request: next(answers)))
    other = _budget(client)  # another process's view of the same key
    seen_pauses: list[float] = []

    def sleep(seconds: float) -> None:
        seen_pauses.append(other.state()["pause_ms"])
        time.sleep(seconds)

    http.sleep = sleep
    assert http.call("GET", "/pods").data == {"ok": True}
    # While the client backed off from the 429, the whole fleet's bucket was paused.
    assert seen_pauses and seen_pauses[0] > 500
    # The 200's RateLimit-Policy resized the shared bucket and its remaining drained it.
    state = other.state()
    assert state["rate"] == pytest.approx(60 / 60_000)
    assert state["cap"] == 10  # the configured burst caps the policy's 60


def test_http_client_fails_open_when_redis_is_down(client: redis.Redis) -> None:
    http = _http(client, httpx.MockTransport(lambda request: httpx.Response(200, json=[])))
    # Nothing listens on port 1: every budget command fails to connect.
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    http.budget = RateBudget(
        dead, provider="runpod", api="management", key_fingerprint=fingerprint("k"), per_minute=60
    )
    assert http.call("DELETE", "/pods/x", expect=(200,)).data == []


def test_the_reserve_shrinks_with_the_time_left_in_the_window(client: redis.Redis) -> None:
    budget = _budget(client, per_minute=6000, burst=None)
    # 100 tokens, a read must leave 25: with 20 left it waits...
    budget.observe(
        status=200, rate_limit=parse_rate_limit('"minute";r=20;t=60', '"minute";q=100;w=60')
    )
    assert budget.try_acquire(ApiClass.READ) > 0
    # ...but with 20 left and 6 s of a 60 s window to go, the reserve is only 2.5.
    other = _budget(client, per_minute=6000, burst=None, key="other")
    other.observe(
        status=200, rate_limit=parse_rate_limit('"minute";r=20;t=6', '"minute";q=100;w=60')
    )
    assert other.try_acquire(ApiClass.READ) == 0
