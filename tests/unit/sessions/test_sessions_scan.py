"""Whole-collection reads at scale: the registry's indexes are read with SSCAN/ZSCAN in
batches (never one SMEMBERS or ``ZRANGE 0 -1``, which block Redis for tens of ms at 100k
sessions), and the GPU-idle watch reads only the sessions that opted in when no
deployment-wide policy is set. Real redis-server; Redis's own command statistics are the
evidence. Runs in the untagged layout and, with ``ATLAS_REDIS_SHARDS=4``, the tagged one.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
import redis

from atlas_tasks.config import reset_settings
from atlas_tasks.sessions.meter import CostMeter
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.store import SCAN_BATCH, SessionStore
from tests.unit.sessions.test_sessions_cost import Env, UtilCloud, _env, running


@pytest.fixture
def env(redis_client: redis.Redis) -> Iterator[Env]:
    yield _env(redis_client, UtilCloud())
    reset_settings()


def _calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the last ``CONFIG RESETSTAT``."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _track_raw(store: SessionStore, count: int) -> set[str]:
    """``count`` ids in the tracked set(s), each in its own shard's set, without records
    (the iterators read ids only; records would cost the test seconds)."""
    ids = {f"scan-{i:05d}-{secrets.token_hex(2)}" for i in range(count)}
    with store.r.pipeline(transaction=False) as pipe:
        for sid in ids:
            pipe.sadd(store.names_of(sid).sessions, sid)
        pipe.execute()
    return ids


def test_list_ids_and_iter_ids_read_by_sscan_in_batches(env: Env) -> None:
    ids = _track_raw(env.store, 2 * SCAN_BATCH + 345)
    env.redis.config_resetstat()

    assert env.store.list_ids() == sorted(ids)
    batches = list(env.store.iter_ids(700))
    flat = [sid for batch in batches for sid in batch]
    assert len(flat) == len(ids) and set(flat) == ids  # each id once, none missing
    assert len(batches) >= len(ids) // 700 and all(0 < len(b) <= 700 for b in batches)

    calls = _calls(env.redis)
    assert "smembers" not in calls
    # more than one SSCAN per pass: the set is read in pieces, not in one command
    assert calls["sscan"] > 2 * len(env.store.shards)


def test_meter_candidates_scan_tracked_and_meter_index_once_each(env: Env) -> None:
    ids = _track_raw(env.store, 1500)
    # owed a final charge only (ended: in the meter index, no longer tracked), and one
    # in both collections: listed once
    owed = "owed-" + secrets.token_hex(4)
    both = sorted(ids)[0]
    for sid in (owed, both):
        env.redis.zadd(env.store.names_of(sid).meter_index, {sid: 1})
    meter = CostMeter(env.deps)
    env.redis.config_resetstat()

    batches = list(meter.iter_candidates(400))
    flat = [sid for batch in batches for sid in batch]
    assert sorted(flat) == sorted(ids | {owed}) and all(len(b) <= 400 for b in batches)
    assert meter.candidates() == sorted(ids | {owed})
    calls = _calls(env.redis)
    assert "smembers" not in calls and "zrange" not in calls
    assert calls["sscan"] >= 2 and calls["zscan"] >= 1


def test_meter_run_charges_running_sessions_without_whole_collection_reads(env: Env) -> None:
    sids = [running(env)[0] for _ in range(3)]
    env.redis.config_resetstat()
    report = env.meter().meter(now_ms=env.store.now_ms() + 120_000)
    assert sorted(report.metered) == sorted(sids) and report.micros > 0
    calls = _calls(env.redis)
    assert "smembers" not in calls and "zrange" not in calls


def _opted(e: Env, util: list[int] | None = None) -> tuple[str, str]:
    sid, pod = running(e, gpu_idle_below_pct=10.0, gpu_idle_window_ms=60_000)
    assert isinstance(e.cloud, UtilCloud)
    e.cloud.util[pod] = util
    return sid, pod


def _watched(store: SessionStore) -> set[str]:
    return {sid for batch in store.iter_gpu_watch_ids() for sid in batch}


def test_opt_in_is_indexed_in_the_create_step_in_the_sessions_shard(env: Env) -> None:
    plain, _ = running(env)
    opted, _ = _opted(env)
    assert _watched(env.store) == {opted}
    # the index is the opted session's own shard's (one slot with its record)
    key = env.store.names_of(opted).gpu_watch
    assert env.redis.sismember(key, opted)
    if env.store.ks.tagged:
        record = env.store.keys(opted).record
        tag = record[record.index("{") : record.index("}") + 1]
        assert tag in key and tag.startswith("{s")
    assert not any(env.redis.sismember(n.gpu_watch, plain) for n in env.store.shards)


def test_watch_without_policy_reads_only_opted_in_sessions(env: Env) -> None:
    plain = {running(env)[0] for _ in range(40)}
    assert plain
    watcher = env.watcher()
    watcher.watch(env.enqueue)  # the deployment's one backfill pass (see the next test)
    env.redis.config_resetstat()
    report = watcher.watch(env.enqueue)
    assert report.polled == []
    calls = _calls(env.redis)
    # nobody opted in: no record read at all (the one HGETALL is the idle marks' hash),
    # no whole-set read: one SSCAN of each shard's (empty) opt-in index
    assert "hmget" not in calls and "smembers" not in calls and calls.get("hgetall") == 1
    assert calls["sscan"] == len(env.store.shards)

    opted, _ = _opted(env, [0])
    env.redis.config_resetstat()
    report = watcher.watch(env.enqueue)
    assert report.polled == [opted] and report.idle == [opted]
    calls = _calls(env.redis)
    assert calls.get("hmget", 0) == 1  # the opted-in session's fields, nobody else's


def test_sessions_opted_in_before_the_index_existed_are_indexed_once(env: Env) -> None:
    """An upgrade with live opted-in sessions: the first watch adds them to the index."""
    older, _ = _opted(env, [0])
    env.redis.srem(env.store.names_of(older).gpu_watch, older)  # recorded before the index
    plain = running(env)[0]
    report = env.watcher().watch(env.enqueue)
    assert report.polled == [older] and _watched(env.store) == {older}
    assert plain not in _watched(env.store)
    # once per deployment: a later session missing from the index stays missing
    later, _ = _opted(env, [0])
    env.redis.srem(env.store.names_of(later).gpu_watch, later)
    assert later not in env.watcher().watch(env.enqueue).polled


def test_watch_prunes_ended_sessions_from_the_opt_in_index(env: Env) -> None:
    ended, _ = _opted(env, [50])
    kept, _ = _opted(env, [50])
    env.store.finish_terminate(ended, "test")
    assert _watched(env.store) == {ended, kept}  # ending does not touch the index

    report = env.watcher().watch(env.enqueue)
    assert report.polled == [kept]
    assert _watched(env.store) == {kept}


def test_watch_with_default_policy_still_watches_everyone_and_prunes(
    redis_client: redis.Redis,
) -> None:
    cloud = UtilCloud()
    e = _env(redis_client, cloud)
    ended, _ = _opted(e, [50])
    e.store.finish_terminate(ended, "test")
    plain = {running(e)[0] for _ in range(5)}

    e = _env(redis_client, cloud, gpu_idle_below_pct=5, gpu_idle_window_ms=1_000)
    redis_client.config_resetstat()
    report = e.watcher().watch(e.enqueue)
    # plain sessions have no utilisation figure: polled (read), not idle
    assert set(report.polled) == plain and report.idle == []
    assert _watched(e.store) == set()
    assert "smembers" not in _calls(redis_client)
    reset_settings()


def test_spawning_opted_in_session_is_indexed_but_not_polled(env: Env) -> None:
    sid = secrets.token_hex(8)
    env.store.create(
        SessionRecord(
            id=sid,
            provider="mock",
            status=SessionStatus.SPAWNING,
            pod_name=f"atlas-{sid}",
            idle_ttl_ms=60_000,
            gpu_idle_below_pct=10.0,
            gpu_idle_window_ms=1_000,
        )
    )
    assert _watched(env.store) == {sid}
    assert env.watcher().watch(env.enqueue).polled == []
    assert _watched(env.store) == {sid}  # still tracked: kept
