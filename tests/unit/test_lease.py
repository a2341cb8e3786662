"""The one lease primitive: owner-only renew and release, against a real redis-server."""

from __future__ import annotations

import time

import pytest
import redis

from atlas_tasks.lease import LUA_LEASE_FUNCTIONS, Lease

pytestmark = pytest.mark.integration


@pytest.fixture
def r(redis_url: str) -> redis.Redis:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    client.delete("t:lease")
    return client


def test_acquire_is_exclusive_and_release_frees(r: redis.Redis) -> None:
    first, second = Lease(r, "t:lease", 5_000), Lease(r, "t:lease", 5_000)
    assert first.acquire()
    assert not second.acquire()
    assert second.holder() == first.owner
    assert first.release()
    assert second.acquire()


def test_a_holder_that_outlived_its_lease_cannot_release_or_renew_the_next_ones(
    r: redis.Redis,
) -> None:
    slow_sweep = Lease(r, "t:lease", 50)
    assert slow_sweep.acquire()
    deadline = time.monotonic() + 5
    while r.exists("t:lease") and time.monotonic() < deadline:
        time.sleep(0.01)  # the sweep outlives its lock
    next_sweep = Lease(r, "t:lease", 5_000)
    assert next_sweep.acquire()
    assert not slow_sweep.release()  # the late release leaves the next holder's lock alone
    assert not slow_sweep.renew()
    assert next_sweep.held()
    assert r.pttl("t:lease") > 4_000


def test_keep_alive_renews_until_exit(r: redis.Redis) -> None:
    lease = Lease(r, "t:lease", 300)
    with lease as held:
        assert held
        with lease.keep_alive() as keeper:
            time.sleep(0.9)  # three TTLs: only renewals keep it
            assert lease.held()
        assert not keeper.lost
    assert r.get("t:lease") is None


def test_keep_alive_reports_a_lost_lease(r: redis.Redis) -> None:
    lease = Lease(r, "t:lease", 200)
    assert lease.acquire()
    with lease.keep_alive(every_ms=50) as keeper:
        r.set("t:lease", "someone-else")
        deadline = time.monotonic() + 5
        while not keeper.lost and time.monotonic() < deadline:
            time.sleep(0.01)
    assert keeper.lost
    assert r.get("t:lease") == "someone-else"


def test_lua_functions_embed_in_other_scripts(r: redis.Redis) -> None:
    script = LUA_LEASE_FUNCTIONS + "return lease_acquire(KEYS[1], ARGV[1], ARGV[2])"
    assert r.eval(script, 1, "t:lease", "a", 5000) == 1
    assert r.eval(script, 1, "t:lease", "b", 5000) == 0
    assert Lease(r, "t:lease", 5000, owner="a").release()


def test_ttl_must_be_positive(r: redis.Redis) -> None:
    with pytest.raises(ValueError):
        Lease(r, "t:lease", 0)
