"""Redis Cluster safety of the stores outside the session registry and quotas (issue 17).

In the tagged layout (``ATLAS_REDIS_SHARDS``) every Lua script and MULTI of the job
store, the Fly store, the rate budget, the events and the metrics must touch keys of one
hash slot. :class:`tests.support.slots.SlotChecker` proves it on one real redis-server:
it intercepts every script, transaction and multi-key command the flows below send and
fails on a second slot. Keys built inside Lua from ARGV prefixes (the metrics observe
script) are asserted separately with :func:`assert_prefix_in_slot`.

The untagged layout (the default) must keep every name byte for byte: checked here too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from atlas_tasks import celery_app, events, metrics
from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.fly import service as fly_service
from atlas_tasks.fly import store as fly_store
from atlas_tasks.fly.token_storage import RedisTokenStorage, TokenRecord
from atlas_tasks.fly.tokens import FlyTokens
from atlas_tasks.jobs import client as jobs_client
from atlas_tasks.jobs.store import (
    JobRecord,
    JobStatus,
    JobStore,
    event_keys,
    job_key,
    job_key_pattern,
    lease_key,
)
from atlas_tasks.key_groups import FLY_GROUP, JOBS_GROUP, budget_group, fill
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.providers.budget import RateBudget
from atlas_tasks.redis_conn import reset_redis_clients
from atlas_tasks.sealing import generate_key
from atlas_tasks.specs import JobStatus as ProviderJobStatus
from atlas_tasks.testing.localstack import RedisServer
from tests.support.harness import redis_available
from tests.support.slots import (
    SlotChecker,
    assert_prefix_in_slot,
    hash_tag,
    single_node_cluster,
    slot_of,
)
from tests.unit.test_fly_log_streamer import FakeLogs
from tests.unit.test_fly_tokens import calls, fake_cli  # noqa: F401 (fixture)
from tests.unit.test_jobs_service import Scheduler, ScriptedProvider, _drive, _service

SHARDS = 16


@pytest.fixture(scope="module")
def cluster_node() -> Iterator[str]:
    """A one-node Redis Cluster: the server itself refuses cross-slot steps."""
    if not redis_available():
        pytest.skip("redis-server not installed")  # the conftest's policy (CI fails there)
    with single_node_cluster() as url:
        yield url


@pytest.fixture(params=["redis", "cluster-node"])
def redis_url(request: pytest.FixtureRequest, redis_server: RedisServer) -> Iterator[str]:
    """Every flow below runs twice: on one redis-server under the slot checker, and on a
    one-node cluster that raises CROSSSLOT by itself (overrides the conftest's)."""
    url = redis_server.url if request.param == "redis" else request.getfixturevalue("cluster_node")
    client = redis.Redis.from_url(url)
    client.flushall()
    client.close()
    yield url


@pytest.fixture
def plain_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """The session's plain redis-server (the checker's self-tests send cross-slot steps
    on purpose, which a cluster node would refuse)."""
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def tagged(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AtlasSettings]:
    """The tagged layout (what ``redis+cluster://`` implies) on the test's redis-server."""
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("ATLAS_REDIS_SHARDS", str(SHARDS))
    reset_settings()
    reset_redis_clients()
    assert keyspace().tagged
    yield AtlasSettings(
        redis_url=redis_url,
        redis_shards=SHARDS,
        fly_logs_poll_interval_s=0.05,
        fly_logs_lease_s=2,
    )
    reset_redis_clients()


@pytest.fixture
def checker(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlotChecker]:
    with SlotChecker(redis_client).installed(monkeypatch) as installed:
        yield installed


# --------------------------------------------------------------------------- the checker


def test_the_checker_flags_cross_slot_scripts_transactions_and_commands(
    plain_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SlotChecker(plain_client).installed(monkeypatch) as checker:
        _send_cross_slot_steps(plain_client, checker)


def _send_cross_slot_steps(redis_client: redis.Redis, checker: SlotChecker) -> None:
    same = ["atlas:{t}:a", "atlas:{t}:b"]
    apart = ["atlas:a", "atlas:b"]
    assert slot_of(apart[0]) != slot_of(apart[1])
    script = "return redis.call('SET', KEYS[1], ARGV[1])"
    redis_client.eval(script, 2, *same, "x")
    checker.assert_clean(min_scripts=1)
    redis_client.eval(script, 2, *apart, "x")  # EVAL
    redis_client.register_script(script)(keys=apart, args=["y"])  # EVALSHA
    redis_client.eval("return 1", 0)  # keyless
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.set(apart[0], 1)
        pipe.set(apart[1], 1)
        pipe.execute()
    sets = ["atlas:s1", "atlas:s2"]
    assert slot_of(sets[0]) != slot_of(sets[1])
    redis_client.sunionstore(sets[0], [sets[1]])  # a multi-key command
    redis_client.zunionstore(sets[0], [sets[1]])  # movable keys
    kinds = [v.kind for v in checker.violations]
    assert kinds == ["script", "script", "transaction", "command", "command"]
    assert checker.keyless == ["EVAL"]
    with pytest.raises(AssertionError, match="cross-slot"):
        checker.assert_clean()
    checker.violations.clear()
    with pytest.raises(AssertionError, match="keyless"):
        checker.assert_clean()
    checker.assert_clean(allow_keyless=True)


def test_the_checker_lets_pass_what_a_cluster_accepts(
    plain_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SlotChecker(plain_client).installed(monkeypatch) as checker:
        _send_cluster_safe_steps(plain_client, checker)


def _send_cluster_safe_steps(redis_client: redis.Redis, checker: SlotChecker) -> None:
    apart = ["atlas:a", "atlas:b"]
    with redis_client.pipeline(transaction=False) as pipe:  # split by the cluster client
        pipe.set(apart[0], 1)
        pipe.set(apart[1], 1)
        pipe.execute()
    with redis_client.pipeline(transaction=True) as pipe:
        pipe.set("atlas:{t}:a", 1)
        pipe.incr("atlas:{t}:b")
        pipe.execute()
    redis_client.delete(*apart)  # split by the cluster client too
    redis_client.mget(["atlas:{t}:a", "atlas:{t}:b"])
    checker.assert_clean(min_transactions=1)
    with pytest.raises(AssertionError, match="scripts ran"):
        checker.assert_clean(min_scripts=1)


def test_prefixes_a_script_builds_keys_from_must_carry_the_tag() -> None:
    slot = slot_of("atlas:{s3}:x")
    assert_prefix_in_slot("atlas:{s3}:session:", slot)
    with pytest.raises(AssertionError, match="no hash tag"):
        assert_prefix_in_slot("atlas:session:", slot)
    with pytest.raises(AssertionError, match="not"):
        assert_prefix_in_slot("atlas:{s4}:session:", slot)
    assert hash_tag("atlas:{}:x") is None and hash_tag("a:{jobs}:b") == "jobs"


def test_the_cluster_node_refuses_cross_slot_steps_and_the_untagged_job_layout(
    cluster_node: str,
) -> None:
    """The server-side half of the proof can fail: the one-node cluster raises CROSSSLOT
    for a cross-slot script and for the job commit in the untagged layout."""
    client = redis.Redis.from_url(cluster_node, decode_responses=True)
    client.flushall()
    try:
        with pytest.raises(redis.ResponseError, match="same slot"):
            client.eval("return 1", 2, "atlas:a", "atlas:b")
        assert not keyspace().tagged
        store = JobStore(client)
        store.create(JobRecord(id="j", provider="p", endpoint="e"), max_duration_ms=60_000)
        with pytest.raises(redis.ResponseError, match="same slot"):
            store.commit("j", fields={"status": "in_queue"}, events=[("status", {})])
    finally:
        client.close()


# --------------------------------------------------------------------------- names


def test_untagged_names_are_unchanged() -> None:
    """One Redis / Sentinel (no ATLAS_REDIS_SHARDS): every name as before, byte for byte."""
    assert not keyspace().tagged
    assert job_key("j") == "atlas:job:j" and lease_key("j") == "atlas:job-lease:j"
    assert job_key_pattern() == "atlas:job:*"
    assert event_keys("j") == ("atlas:job-events:j", "atlas:job-events-log:j")
    assert events.topic_keys("s") == ("atlas:events:s", "atlas:events-log:s")
    assert events.topic_keys("t", "deploy") == (
        "atlas:deploy-events:t",
        "atlas:deploy-events-log:t",
    )
    assert events.topic_keys("a", "logs") == ("atlas:logs-events:a", "atlas:logs-events-log:a")
    assert fly_store.lock_key("a") == "atlas:fly:logs-lock:a"
    assert fly_store.cursor_key("a") == "atlas:fly:logs-cursor:a"
    assert fly_store.subscribers_key("a") == "atlas:fly:logs-subs:a"
    assert fly_store.start_key("a") == "atlas:fly:logs-start:a"
    assert fly_store.token_lock_key("a") == "atlas:fly:token-lock:a"
    assert RedisTokenStorage()._key("a", "cached") == "atlas:fly:token:a:cached"
    budget = RateBudget(
        redis.Redis(), provider="runpod", api="rest", key_fingerprint="f", per_minute=60
    )
    assert budget.key == "atlas:ratebudget:runpod:rest:f"
    assert budget.pause_key == "atlas:ratebudget:runpod:rest:f:pause"
    assert metrics.metric_keyspaces() == [keyspace()]
    assert events.topic_keys("s", namespace="blue") == ("blue:events:s", "blue:events-log:s")


def test_tagged_names_share_one_tag_per_group(tagged: AtlasSettings) -> None:
    jobs = {job_key("j"), lease_key("j"), *event_keys("j"), job_key("other")}
    assert {hash_tag(k) for k in jobs} == {JOBS_GROUP}
    assert job_key("j") == "atlas:{jobs}:job:j" and job_key_pattern() == "atlas:{jobs}:job:*"
    fly = {
        fly_store.lock_key("a"),
        fly_store.cursor_key("a"),
        fly_store.subscribers_key("a"),
        fly_store.start_key("a"),
        fly_store.token_lock_key("a"),
        RedisTokenStorage()._key("a", "manual"),
        *events.topic_keys("a", "logs"),
        *events.topic_keys("ticket", "deploy"),
    }
    assert {hash_tag(k) for k in fly} == {FLY_GROUP}
    # A session's topic lives in its registry shard (beside its record).
    channel, stream = events.topic_keys("sess-1")
    shard = keyspace().shard_of("sess-1")
    assert hash_tag(channel) == hash_tag(stream) == shard.tag
    assert stream == fill(shard, C.EVENTS_STREAM_KEY, id="sess-1")
    # One tag per rate budget bucket: bucket and pause together, buckets apart.
    a = RateBudget(redis.Redis(), provider="runpod", api="rest", key_fingerprint="f1", per_minute=1)
    b = RateBudget(redis.Redis(), provider="runpod", api="rest", key_fingerprint="f2", per_minute=1)
    assert hash_tag(a.key) == hash_tag(a.pause_key) == budget_group("runpod", "rest", "f1")
    assert hash_tag(b.key) != hash_tag(a.key)


# --------------------------------------------------------------------------- flows


def test_job_flows_touch_one_slot_per_step(
    tagged: AtlasSettings, redis_client: redis.Redis, checker: SlotChecker
) -> None:
    # Submit (the client's create + first event), poll to completion, stream chunks,
    # cancel: every script the job store has.
    provider = ScriptedProvider(
        [ProviderJobStatus.IN_QUEUE, ProviderJobStatus.IN_PROGRESS, ProviderJobStatus.COMPLETED],
        stream=[
            (ProviderJobStatus.IN_PROGRESS, ["a", "b"]),
            (ProviderJobStatus.COMPLETED, ["c"]),
        ],
        output={"x": 1},
    )
    svc = _service(redis_client, provider)
    for job_id, stream in (("done", False), ("streamed", True), ("cancelled", False)):
        svc.store.create(
            JobRecord(id=job_id, provider="scripted", endpoint="ep", stream=stream),
            max_duration_ms=60_000,
        )
        events.publish(job_id, "status", {"status": "submitting"}, topic="job", client=svc.store.r)
        assert svc.run(job_id, {"endpoint": "ep", "input": {}})["outcome"] == "submitted"
    assert [r.outcome for r in _drive(svc, "done")][-1] == "finished"
    assert [r.outcome for r in _drive(svc, "streamed")][-1] == "finished"
    svc.store.request_cancel("cancelled")
    result = svc.poll("cancelled", 0, 0, owner="x", schedule=Scheduler())
    assert (result.outcome, result.status) == ("finished", "cancelled")

    checker.assert_clean(min_scripts=15)
    assert checker.script_slots() == {slot_of("{jobs}")}
    # The flows really wrote the tagged keys.
    assert redis_client.hget("atlas:{jobs}:job:done", "status") == JobStatus.COMPLETED
    chunks = [
        e.data["chunk"] for e in events.history("streamed", topic="job") if e.type == "output"
    ]
    assert chunks == ["a", "b", "c"]
    assert redis_client.exists("atlas:job:done") == 0


def test_job_client_paths_touch_one_slot_per_step(
    tagged: AtlasSettings,
    redis_client: redis.Redis,
    checker: SlotChecker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The caller side: submit (record + first event), get, cancel, follow.
    sent: list[str] = []

    class FakeApp:
        def send_task(self, name: str, args: Any = None, **options: Any) -> None:
            sent.append(name)

    monkeypatch.setattr(celery_app, "get_app", FakeApp)
    handle = jobs_client.submit("ep", {"a": 1}, provider="mock")
    assert jobs_client.get(handle.id).status == JobStatus.SUBMITTING
    assert redis_client.exists(f"atlas:{{jobs}}:job:{handle.id}") == 1
    store = JobStore(redis_client)
    assert store.commit(
        handle.id,
        require_status=JobStatus.SUBMITTING,
        fields={"status": "in_queue", "provider_job_id": "p1"},
    ) == ("ok", [])
    jobs_client.cancel(handle.id)
    assert sent == [C.TASK_JOB_RUN, C.TASK_JOB_POLL]
    assert store.finish(handle.id, JobStatus.CANCELLED) == "ok"
    seen = [e.type for e in jobs_client.follow(handle.id, timeout=5)]
    assert seen == ["status", "status", "cancelled"]
    checker.assert_clean(min_scripts=4)
    assert checker.script_slots() == {slot_of("{jobs}")}


def test_fly_logs_streamer_and_deploy_touch_one_slot_per_step(
    tagged: AtlasSettings, redis_client: redis.Redis, checker: SlotChecker
) -> None:
    deps = Dependencies.from_client(redis_client, settings=tagged)
    logs = FakeLogs()
    logs.add(3)
    assert fly_service.streamer_lease(deps, "web", "o1").acquire()
    fly_store.register_subscriber(redis_client, "web", "s1", now_ms=_now_ms(), ttl_ms=300)
    first = fly_service.run_slice(deps, "web", "o1", fetch=logs, slice_s=0.2)
    assert first.outcome == "continue"
    logs.add(2)
    # the subscriber's registration runs out during this slice: the streamer stops
    last = fly_service.run_slice(deps, "web", "o1", fetch=logs, slice_s=5)
    assert last.outcome == "stopped"
    history = events.history("web", topic="logs")
    assert [e.type for e in history][-1] == "stopped"
    assert any(e.type == "logs" for e in history)
    # a deploy ticket's events
    for event in ("started", "line", "exit"):
        assert events.publish("ticket-1", event, {}, topic="deploy", client=redis_client)

    checker.assert_clean(min_scripts=6)
    assert checker.script_slots() == {slot_of("{fly}")}


def test_fly_token_paths_touch_one_slot_per_step(
    tagged: AtlasSettings,
    redis_client: redis.Redis,
    checker: SlotChecker,
    tmp_path: Path,
    fake_cli: Path,  # noqa: F811 (fixture)
) -> None:
    settings = AtlasSettings(
        redis_url=tagged.redis_url,
        redis_shards=SHARDS,
        secret_key=generate_key(),
        fly_config_file=str(tmp_path / "config.yml"),
        fly_cli_timeout_s=5.0,
    )
    storage = RedisTokenStorage(redis_client, settings)
    tokens = FlyTokens(storage, settings=settings, redis_client=redis_client)
    resolved = tokens.resolve("my-app")  # the single-flight lease, the CLI, the cache
    assert resolved.source == "cli" and len(calls(fake_cli)) == 1
    assert storage.get("my-app", "cached") is not None
    storage.put("my-app", "manual", TokenRecord(token="t", expires_at=None))
    storage.delete("my-app", "manual")
    assert redis_client.exists("atlas:{fly}:fly:token:my-app:cached") == 1
    checker.assert_clean(min_scripts=1)
    assert checker.script_slots() == {slot_of("{fly}")}


def test_rate_budget_touches_one_slot_per_step(
    tagged: AtlasSettings, redis_client: redis.Redis, checker: SlotChecker
) -> None:
    budget = RateBudget(
        redis_client, provider="runpod", api="rest", key_fingerprint="abc", per_minute=600
    )
    assert budget.try_acquire() == 0
    assert budget.acquire(sleep=lambda s: None) == 0.0
    budget.pause(50)
    assert budget.try_acquire() > 0  # paused fleet-wide
    assert budget.state()["pause_ms"] > 0
    checker.assert_clean(min_scripts=4)
    assert checker.script_slots() == {slot_of(budget.key)}


def test_metrics_observe_counts_per_shard_and_the_scrape_sums_them(
    tagged: AtlasSettings, redis_client: redis.Redis, checker: SlotChecker
) -> None:
    ks = keyspace()
    ids = [f"sess-{i}" for i in range(12)]
    shards = {ks.shard_index(i) for i in ids}
    assert len(shards) > 1  # the ids really span shards
    now = _now_ms()
    for session_id in ids:
        redis_client.hset(
            fill(ks.shard_of(session_id), C.SESSION_KEY, id=session_id),
            mapping={
                "status": "running",
                "provider": "mock",
                "created_at_ms": now - 2000,
                "running_at_ms": now - 1000,
            },
        )
    assert metrics.observe_sessions(ids, client=redis_client) == len(ids)
    assert metrics.observe_sessions(ids, client=redis_client) == 0  # counted once
    checker.assert_clean(min_scripts=2 * len(shards))
    # Keys the script builds from ARGV prefixes (record, metrics hashes): in the slot of
    # the key it declares (the shard's meter index), call by call.
    for keys, args in zip(checker.scripts, checker.script_args, strict=True):
        assert_prefix_in_slot(args[0], slot_of(keys[0]))
        assert_prefix_in_slot(args[1], slot_of(keys[0]))
    for shard in ks.all_shards():
        slot = slot_of(shard.key(C.METER_INDEX_KEY))
        assert_prefix_in_slot(fill(shard, C.SESSION_KEY, id=""), slot)
        assert_prefix_in_slot(shard.key(metrics.PREFIX), slot)
    assert len(checker.script_slots()) == len(shards)
    metrics.incr("terminate_retries", client=redis_client)  # the namespace's own hash
    body, _ = metrics.render_metrics(redis_client)
    text = body.decode()
    assert f'atlas_spawns_total{{outcome="running",provider="mock"}} {len(ids)}.0' in text
    assert "atlas_terminate_retries_total 1.0" in text
    assert f'atlas_spawn_latency_seconds_count{{provider="mock"}} {len(ids)}.0' in text
    checker.assert_clean()


def _now_ms() -> int:
    return int(time.time() * 1000)
