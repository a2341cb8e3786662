"""Issue 12, finding 1: whatever ends a spawn ends it visibly, at once.

A create that fails while its by-name cleanup cannot run either (a bad API key) used to
leave the session ``spawning`` for good: no ``failed`` event, ``wait()`` timing out, the
session listed, and the stale-intent sweep calling the provider once a second. Here the
spawn is driven step by step on a real redis-server against the fake cloud over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis

from atlas_tasks import events
from atlas_tasks.client import Session
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import AtlasError
from atlas_tasks.sessions.reaper import ReapReport, SessionReaper
from atlas_tasks.sessions.store import CLEANUP_BACKOFF_BASE_MS, CLEANUPS_KEY, SessionStore
from atlas_tasks.testing.fakecloud import FakeCloud
from tests.integration.spawn_support import (
    CREATE_MATCH,
    LOOKUP_MATCH,
    cloud,  # noqa: F401 - fixture
    cloud_env,
    creates_of,
    live_pods_of,
    new_session,
    run_spawn_task,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def reg(
    cloud: FakeCloud,
    redis_url: str,
    redis_client: redis.Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SessionStore]:
    cloud.reset()
    cloud_env(
        monkeypatch, cloud, redis_url, create_lookup_wait_ms="300", http_max_retries="0"
    )  # one HTTP call per lookup: countable
    yield SessionStore(redis_client)


def _lookups(cloud: FakeCloud) -> int:  # noqa: F811
    return sum(
        n
        for route, n in cloud.state()["routes"].items()
        if route.startswith("GET ") and route.endswith("/pods")
    )


def test_refused_create_fails_visibly_within_a_second(reg: SessionStore, cloud: FakeCloud) -> None:  # noqa: F811
    """Bad API key: create and lookup both answer 401. The provider's own error reaches
    wait(), info() and the events at once; no cleanup is owed (401 made nothing)."""
    sid, sealed = new_session(reg, api_key="revoked-key")
    started = time.monotonic()

    result = run_spawn_task(sid, sealed, attempt_id="t1")

    info = reg.info(sid)
    assert info.status == "failed", info
    assert time.monotonic() - started < 1.0
    assert info.error is not None and info.error["kind"] == "unauthorized", info.error
    assert result["status"] == "failed"
    assert sid not in reg.list_ids()
    assert sid not in reg.intent_ids()  # nothing left for the stale-intent sweep
    with pytest.raises(AtlasError) as raised:
        Session(sid, "runpod", f"atlas-{sid}", "none").wait(timeout=2)
    assert raised.value.kind == "unauthorized"
    statuses = [e.data.get("status") for e in events.history(sid) if e.type == "status"]
    assert statuses == ["failed"]
    assert creates_of(cloud, sid) == 0


def test_unfinished_cleanup_is_an_obligation_retried_with_backoff(
    reg: SessionStore, cloud: FakeCloud, redis_client: redis.Redis
) -> None:  # noqa: F811
    """The create made a pod but answered 500, and every lookup fails: the session still
    fails at once with the create's error; the cleanup is retried by the reaper with
    exponential backoff (never once a sweep) and its outcome is reported separately."""
    cloud.fail_next(CREATE_MATCH, 500, after_create=True)
    cloud.fail_next(LOOKUP_MATCH, 503, times=None, retry_after=0)
    sid, sealed = new_session(reg)
    started = time.monotonic()

    run_spawn_task(sid, sealed, attempt_id="t1")

    info = reg.info(sid)
    assert info.status == "failed"
    assert info.error is not None and info.error["status"] == 500, info.error
    # the inline cleanup try polls its lookup window at most, then reports
    assert time.monotonic() - started < 1.0 + 0.3 + 1.0
    assert sid not in reg.list_ids()
    assert len(live_pods_of(cloud, sid)) == 1  # the pod the 500 hid
    cleanup = [e.data for e in events.history(sid) if e.type == "cleanup"]
    assert [c["outcome"] for c in cleanup] == ["retrying"]
    assert sid in reg.intent_ids()  # the orphan scan leaves it to its obligation

    reaper = SessionReaper(Dependencies.default())

    def sweep() -> None:
        reaper.resolve_stale_intents(ReapReport())

    # Not due yet: a sweep makes no provider call.
    before = _lookups(cloud)
    sweep()
    assert _lookups(cloud) == before
    # Due: one attempt per backoff step, each further out; sweeps in between do nothing.
    delays = []
    for attempt in (1, 2, 3):
        redis_client.zadd(CLEANUPS_KEY, {sid: 0})
        before = _lookups(cloud)
        now = reg.now_ms()
        sweep()
        assert _lookups(cloud) == before + 1
        delays.append(float(redis_client.zscore(CLEANUPS_KEY, sid) or 0) - now)
        sweep()
        sweep()
        assert _lookups(cloud) == before + 1, "a failing cleanup was retried at once"
        record = reg.get(sid)
        assert record is not None and record.cleanup_attempts == attempt
    base = CLEANUP_BACKOFF_BASE_MS
    assert [round(d / base) for d in delays] == [1, 2, 4], delays

    # The cloud recovers: the next attempt terminates the pod and reports it; the
    # session's status and original error stand.
    cloud.clear_faults()
    redis_client.zadd(CLEANUPS_KEY, {sid: 0})
    sweep()
    assert live_pods_of(cloud, sid) == []
    cleanup = [e.data for e in events.history(sid) if e.type == "cleanup"]
    assert cleanup[-1]["outcome"] == "done"
    assert cleanup[-1]["terminated_compute_id"]
    after = reg.info(sid)
    assert after.status == "failed" and after.error == info.error
    assert sid not in reg.intent_ids()
    assert redis_client.pttl(f"atlas:session:{sid}") > 0  # the record expires again


def test_stale_intent_ends_the_session_and_leaves_a_backed_off_cleanup(
    reg: SessionStore, cloud: FakeCloud, redis_client: redis.Redis
) -> None:  # noqa: F811
    """A spawn that never finished (its message lost) with a key that no longer works:
    the sweep fails the session at once; the cleanup backs off instead of calling the
    provider on every sweep."""
    sid, _ = new_session(reg, api_key="revoked-key")
    redis_client.zadd("atlas:intents", {sid: 0})  # as if its 10 minutes had passed
    reaper = SessionReaper(Dependencies.default())

    reaper.resolve_stale_intents(ReapReport())

    assert reg.info(sid).status == "failed"
    assert sid not in reg.list_ids()
    assert [e.data.get("status") for e in events.history(sid) if e.type == "status"] == ["failed"]
    first = _lookups(cloud)
    for _ in range(5):
        reaper.resolve_stale_intents(ReapReport())
    assert _lookups(cloud) == first, "the cleanup must wait for its backoff"
    assert sid in reg.cleanup_ids()
    assert reaper.service.run_cleanup(sid, attempt=9) == "retrying"
    assert reg.info(sid).error == {
        "kind": "timeout",
        "message": "spawn did not finish before its intent expired",
    }
