"""Session store on a real redis-server: every state transition and its guarantees."""

from __future__ import annotations

import time

import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks.errors import NotTracked
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.store import SessionStore

pytestmark = pytest.mark.integration


@pytest.fixture
def reg(redis_client: redis.Redis) -> SessionStore:
    return SessionStore(redis_client)


def _create(reg: SessionStore, sid: str = "s1", ttl_ms: int = 200) -> None:
    reg.create(
        SessionRecord(
            id=sid,
            provider="mock",
            status=SessionStatus.SPAWNING,
            pod_name=f"atlas-{sid}",
            idle_ttl_ms=ttl_ms,
            user_id=7,
        )
    )


def test_create_records_intent_and_tracking(reg: SessionStore) -> None:
    _create(reg)
    assert reg.list_ids() == ["s1"]
    assert "s1" in reg.intent_ids()
    info = reg.info("s1")
    assert info.status == "spawning" and info.user_id == 7 and info.idle_ttl_ms == 200


def test_finish_spawn_starts_idle_clock(reg: SessionStore, redis_client: redis.Redis) -> None:
    _create(reg, ttl_ms=5000)
    assert reg.finish_spawn("s1", "pod-1", {"id": "pod-1", "ports": []}) == "running"
    assert "s1" not in reg.intent_ids()
    assert 0 < redis_client.pttl(C.SESSION_ALIVE_KEY.format(id="s1")) <= 5000
    assert redis_client.zscore(C.DEADLINE_INDEX_KEY, "s1") is not None
    assert reg.info("s1").compute_id == "pod-1"


def _create_with_big_spawn_payload(reg: SessionStore, sid: str = "s1") -> None:
    # A sealed spawn payload bigger than any hash-max-listpack-value: the record starts
    # life as a hashtable, which Redis never converts back on its own.
    reg.create(
        SessionRecord(
            id=sid,
            provider="mock",
            status=SessionStatus.SPAWNING,
            pod_name=f"atlas-{sid}",
            idle_ttl_ms=5000,
            user_id=7,
            spawn_sealed="s" * 1500,
            token_hash="h" * 64,
        )
    )


def test_finish_spawn_rewrites_the_record_compact(
    reg: SessionStore, redis_client: redis.Redis
) -> None:
    _create_with_big_spawn_payload(reg)
    key = C.SESSION_KEY.format(id="s1")
    assert redis_client.object("encoding", key) == "hashtable"
    compute = {"id": "pod-1", "ports": [{"internal": 8000, "protocol": "http"}]}
    assert reg.finish_spawn("s1", "pod-1", compute) == "running"
    record = redis_client.hgetall(key)
    assert "spawn_sealed" not in record
    assert record["token_hash"] == "h" * 64 and record["user_id"] == "7"
    assert record["compute_id"] == "pod-1" and record["status"] == "running"
    # The test server runs with the shipped hash-max-listpack-value 1024.
    assert redis_client.object("encoding", key) == "listpack"
    assert redis_client.pttl(key) > 5000  # idle TTL + record grace


def test_finish_spawn_after_a_stop_keeps_the_record_ttl(
    reg: SessionStore, redis_client: redis.Redis
) -> None:
    _create_with_big_spawn_payload(reg)
    key = C.SESSION_KEY.format(id="s1")
    ttl_before = redis_client.pttl(key)
    assert ttl_before > 0
    assert reg.begin_terminate("s1", "requested", "t1", 1000).verdict == "ok"
    assert reg.finish_spawn("s1", "pod-9", {}) == "terminating"
    record = redis_client.hgetall(key)
    assert record["status"] == "terminating" and record["reason"] == "requested"
    assert record["compute_id"] == "pod-9" and "spawn_sealed" not in record
    assert 0 < redis_client.pttl(key) <= ttl_before


def test_touch_rearms_clock_and_rejects_unknown(
    reg: SessionStore, redis_client: redis.Redis
) -> None:
    _create(reg, ttl_ms=300)
    reg.finish_spawn("s1", "pod-1", {})
    alive = C.SESSION_ALIVE_KEY.format(id="s1")
    time.sleep(0.15)
    before = reg.info("s1").last_activity_ms
    assert before is not None
    reg.touch("s1")
    assert redis_client.pttl(alive) > 250  # re-armed to the full TTL
    assert (reg.info("s1").last_activity_ms or 0) >= before + 100  # derived from the live clock
    with pytest.raises(NotTracked):
        reg.touch("nope")


def test_touch_fast_path_is_one_key_and_index_follows_on_claim(
    reg: SessionStore, redis_client: redis.Redis
) -> None:
    _create(reg, ttl_ms=200)
    reg.finish_spawn("s1", "pod-1", {})
    record = C.SESSION_KEY.format(id="s1")
    for _ in range(4):  # touched past its first deadline: the index entry goes stale
        time.sleep(0.08)
        reg.touch("s1")
    assert reg.claim_due(100, 60_000) == []  # alive: the sweep follows the live clock
    score = redis_client.zscore(C.DEADLINE_INDEX_KEY, "s1")
    assert score is not None
    assert reg.now_ms() < score <= reg.now_ms() + 200
    assert redis_client.pttl(record) > C.SESSION_RECORD_GRACE_MS  # record kept alive too


def test_touch_of_a_spawning_session_records_activity(reg: SessionStore) -> None:
    _create(reg, ttl_ms=5000)
    reg.touch("s1")  # no alive key yet: the full script answers
    assert reg.info("s1").status == "spawning"


def test_heartbeats_are_published_when_enabled(redis_client: redis.Redis) -> None:
    loud = SessionStore(redis_client, publish_heartbeats=True)
    _create(loud, ttl_ms=5000)
    loud.finish_spawn("s1", "pod-1", {})
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(C.EVENTS_CHANNEL.format(id="s1"))
    time.sleep(0.05)
    loud.touch("s1")
    message = None
    for _ in range(20):
        message = pubsub.get_message(timeout=0.1)
        if message:
            break
    pubsub.close()
    assert message is not None and '"heartbeat"' in message["data"]


def test_expiry_claim_and_sweep_claim_are_one_claim(reg: SessionStore) -> None:
    for sid in ("a", "b"):
        _create(reg, sid, ttl_ms=50)
        reg.finish_spawn(sid, f"pod-{sid}", {})
    time.sleep(0.12)
    assert reg.claim_expired("a", 60_000) is True
    assert reg.claim_expired("a", 60_000) is False  # a second listener loses
    assert reg.claim_due(100, 60_000) == ["b"]  # the sweep skips what the listener took
    assert reg.claim_expired("b", 60_000) is False  # and the listener what the sweep took


def test_claim_due_skips_touched_and_rescores(reg: SessionStore, redis_client: redis.Redis) -> None:
    for sid in ("a", "b"):
        _create(reg, sid, ttl_ms=100)
        reg.finish_spawn(sid, f"pod-{sid}", {})
    time.sleep(0.15)
    reg.touch("b")  # b is alive again: must not be claimed
    assert reg.claim_due(100, 60_000) == ["a"]
    assert reg.claim_due(100, 60_000) == []  # re-scored into the future, not claimed twice
    assert (redis_client.zscore(C.DEADLINE_INDEX_KEY, "a") or 0) > reg.now_ms()


def test_begin_terminate_fences_and_refuses_live_idle(reg: SessionStore) -> None:
    _create(reg, ttl_ms=10_000)
    reg.finish_spawn("s1", "pod-1", {})
    assert reg.begin_terminate("s1", "idle_timeout", "t1", 1000)[0] == "alive"
    verdict, compute_id, first, record = reg.begin_terminate("s1", "requested", "t1", 1000)
    assert record.provider == "mock" and record.pod_name == "atlas-s1"
    assert (verdict, compute_id, first) == ("ok", "pod-1", True)
    assert reg.begin_terminate("s1", "requested", "t2", 1000)[0] == "fenced"
    # the owner may come back (a Celery retry keeps its task id)
    assert reg.begin_terminate("s1", "requested", "t1", 1000)[:3] == ("ok", "pod-1", False)
    with pytest.raises(NotTracked):
        reg.touch("s1")  # terminating sessions cannot be revived
    reg.finish_terminate("s1")
    assert reg.begin_terminate("s1", "requested", "t3", 1000)[0] == "terminated"
    assert reg.list_ids() == []
    assert reg.info("s1").status == "terminated"


def test_stop_during_spawn_reports_terminating(reg: SessionStore) -> None:
    _create(reg)
    verdict, compute_id, _, _ = reg.begin_terminate("s1", "requested", "t1", 1000)
    assert (verdict, compute_id) == ("ok", "")
    assert reg.finish_spawn("s1", "pod-9", {}) == "terminating"


def test_stale_intents_are_claimed_once(reg: SessionStore, redis_client: redis.Redis) -> None:
    _create(reg)
    redis_client.zadd(C.INTENTS_KEY, {"s1": 1})
    assert reg.claim_stale_intents(10) == ["s1"]
    assert reg.claim_stale_intents(10) == []


def test_terminate_failed_makes_session_due_again(
    reg: SessionStore, redis_client: redis.Redis
) -> None:
    _create(reg, ttl_ms=10_000)
    reg.finish_spawn("s1", "pod-1", {})
    reg.begin_terminate("s1", "requested", "t1", 1000)
    reg.terminate_failed("s1", {"kind": "provider"}, 0)
    assert redis_client.get(C.TERMINATE_FENCE_KEY.format(id="s1")) is None
    assert reg.claim_due(10, 1000) == ["s1"]


def test_terminate_transitions_publish_their_events(reg: SessionStore) -> None:
    from atlas_tasks import events

    _create(reg, ttl_ms=10_000)
    reg.finish_spawn("s1", "pod-1", {})
    reg.begin_terminate("s1", "requested", "t1", 1000)
    reg.begin_terminate("s1", "requested", "t1", 1000)  # a retry: no second event
    reg.finish_terminate("s1", "requested")
    recorded = [(e.type, e.data) for e in events.history("s1", client=reg.r)]
    assert recorded == [
        ("status", {"status": "running", "compute": {}}),  # finish_spawn's
        ("terminating", {"reason": "requested"}),
        ("status", {"status": "terminated", "reason": "requested"}),
    ]
