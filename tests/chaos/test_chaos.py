"""The chaos suite of DESIGN.md's invariants (issue 8).

One run: tracked sessions with idle TTLs of 2–6 s and random touches, against a fake
cloud injecting 10 % 5xx, 5 % 429 with Retry-After, 500-after-create and creates that
land after the client's read timeout, while sessions are stopped during their spawn's
retries, spawn messages are redelivered in whatever status their session has, workers
are SIGKILLed every few seconds, beat is killed and restarted once and Redis (AOF on) is
restarted once. After a drain (faults off) it asserts: no untracked prefixed pod alive,
no session terminated while touched within its TTL, every idle session terminated within
TTL + reap interval + retry slack, at most one create per session (counted at the fake
cloud), no session stuck and every end visible to ``wait()``, no raw (non-AtlasError)
exception at the caller, no raw secret in Redis.
The driver is :mod:`tests.support.chaos`; the counts are printed (``pytest -s``),
and the report and every process log are kept in the test's ``tmp_path``.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from atlas_tasks import orchestrator
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.chaos import ChaosConfig, ChaosRun, Track, run_chaos
from tests.support.harness import in_ci, redis_available

pytestmark = [pytest.mark.chaos, pytest.mark.integration]


@pytest.mark.timeout(900)
def test_invariants_hold_under_faults_kills_and_restarts(
    chaos_config: ChaosConfig, tmp_path: Path
) -> None:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    report = run_chaos(chaos_config)
    text = report.format()
    (tmp_path / "chaos-report.txt").write_text(text)
    (tmp_path / "chaos-logs.txt").write_text(report.logs)
    print(text)
    print(f"report and process logs: {tmp_path}")
    assert not report.violations, f"{text}\n(process logs: {tmp_path / 'chaos-logs.txt'})"
    # The issue asks for a run of at least 200 sessions: count the ones that really spawned.
    assert report.counts["sessions"]["spawned"] >= 200, text


@pytest.mark.timeout(120)
def test_spawn_message_lost_by_the_broker_is_resolved_by_its_intent() -> None:
    """kombu's Redis transport BRPOPs a message, *then* records it as unacked: a worker
    that dies in between loses the message for good (no redelivery). The session's
    write-ahead intent is what remains; once it is stale the reaper must resolve the
    session (today: failed after a by-name cleanup) and no pod may exist."""
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(workers=1, visibility_timeout_s=4) as cluster:
        r = get_redis()
        session_id = _lose_one_spawn(cluster, r)
        time.sleep(4 + 2 + 1)  # visibility timeout + restore interval: nothing comes back
        assert r.hget(f"atlas:session:{session_id}", "status") == "spawning"
        assert cluster.cloud.live_pods() == []
        r.zadd("atlas:intents", {session_id: 0})  # as if its 10 minutes had passed
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if r.hget(f"atlas:session:{session_id}", "status") in ("failed", "running"):
                break
            time.sleep(0.2)
        assert r.hget(f"atlas:session:{session_id}", "status") in ("failed", "running"), (
            cluster.logs()
        )
        assert (
            session_id not in orchestrator.list_ids()
            or r.hget(f"atlas:session:{session_id}", "status") == "running"
        )
        named = [p for p in cluster.cloud.live_pods() if p["name"] == f"atlas-{session_id}"]
        assert len(named) <= 1


@pytest.mark.timeout(120)
def test_lost_spawn_message_is_re_sent_and_runs_once() -> None:
    """The same lost message with a short stall time: the reaper re-sends the spawn from
    its sealed copy in the record, and the session runs on exactly one pod."""
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(workers=1, visibility_timeout_s=4, spawn_stall_ms=3000) as cluster:
        r = get_redis()
        session_id = _lose_one_spawn(cluster, r)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if r.hget(f"atlas:session:{session_id}", "status") == "running":
                break
            time.sleep(0.2)
        assert r.hget(f"atlas:session:{session_id}", "status") == "running", cluster.logs()
        assert r.hget(f"atlas:session:{session_id}", "spawn_sealed") is None
        named = [
            p
            for p in cluster.cloud.state()["pods"] + cluster.cloud.state()["terminated_pods"]
            if p["name"] == f"atlas-{session_id}"
        ]
        assert len(named) == 1


def _lose_one_spawn(cluster: LocalCluster, r: Any) -> str:
    """Freeze the idle worker inside its BRPOP, spawn (Redis hands it the message), then
    SIGKILL it before kombu's unacked bookkeeping. Returns the lost session's id."""
    for _ in range(10):
        worker = cluster.workers[0]
        time.sleep(1.5)  # idle, so blocked in BRPOP
        os.killpg(worker.pid, signal.SIGSTOP)
        s = orchestrator.spawn(provider="runpod", gpu="h100", image="x", idle_ttl_ms=60_000)
        time.sleep(0.3)
        popped = r.llen("compute") == 0 and r.hlen("unacked") == 0
        worker.kill()
        cluster.workers.clear()
        cluster.add_worker(hostname="w1@%h")
        if popped:
            return s.id
        # The freeze fell between two BRPOPs: the message is still queued. Try again.
    raise AssertionError("could not freeze the worker inside BRPOP in 10 tries")


def test_checks_flag_each_kind_of_violation() -> None:
    """The end-of-run checks themselves: leaked, duplicate and touched foreign pods, a
    second create for one session, a wrongful kill, a late idle termination and a session
    left open are all reported."""
    import fakeredis

    run = ChaosRun(ChaosConfig.ci())

    def track(i: int, sid: str, **record: str) -> Track:
        t = Track(
            index=i,
            ttl_ms=2000,
            kind="steady",
            spawn_at=0,
            touch_until=0,
            auth="none",
            per_call_key=False,
            id=sid,
        )
        t.record = {"status": "terminated", "reason": "idle_timeout", **record}
        run.tracks.append(t)
        return t

    ok = track(0, "ok", running_at_ms="1000", terminating_at_ms="3100", ended_at_ms="3200")
    ok.ok_touches = [900]
    early = track(1, "early", running_at_ms="1000", terminating_at_ms="4000", ended_at_ms="4100")
    early.ok_touches = [2500]  # deadline 4500: killed 0.5 s early
    track(2, "late", running_at_ms="1000", terminating_at_ms="200000", ended_at_ms="200000")
    track(3, "open", status="running", compute_id="p3")
    run.foreign_ids = ["f1"]
    pod: dict[str, Any] = {"calls": {}}
    state: dict[str, Any] = {
        "pods": [
            {**pod, "id": "p3", "name": "atlas-open"},
            {**pod, "id": "x", "name": "atlas-nobody"},
            {**pod, "id": "f1", "name": "theirs", "calls": {"deletes": 1}},
        ],
        "terminated_pods": [
            {**pod, "id": "p0", "name": "atlas-ok"},
            {**pod, "id": "p0b", "name": "atlas-ok"},
        ],
    }
    state["creates_by_name"] = {"atlas-ok": 2, "atlas-open": 1}
    violations: list[str] = []
    run.check_pods(state, violations)
    creates = run.check_creates(state, violations)
    assert creates["ok"] == 2 and creates["open"] == 1 and creates["early"] == 0
    run.check_sessions(violations, fakeredis.FakeRedis(decode_responses=True))
    text = "\n".join(violations)
    assert "leaked pod x atlas-nobody" in text
    assert "leaked pod p3" not in text  # tracked by a running session
    assert "foreign pod f1 was touched" in text
    assert "2 pods created for atlas-ok" in text
    assert "session early terminated 0.500s before its idle deadline" in text
    assert "session late ended" in text
    assert "session open still running" in text
    assert "p95 of idle sessions' termination is 197.0s" in text
    assert "session ok: 2 pods created (at most one per session)" in text
    assert "session open:" not in text
    assert len(violations) == 8, text
