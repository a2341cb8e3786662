"""The orchestrator end to end: real redis-server, Celery worker and beat, fake cloud.

These are the "must show" scenarios of the orchestrator issue and DESIGN.md's
invariants 1–6, at default reaper settings (1 s beat interval + keyspace fast path).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest

from atlas_tasks import constants as C
from atlas_tasks import events, orchestrator
from atlas_tasks.celery_app import get_app
from atlas_tasks.errors import NotTracked
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.harness import dump_redis

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"


def _pods(cluster: LocalCluster, name: str) -> list[dict[str, Any]]:
    return [p for p in cluster.cloud.live_pods() if p.get("name") == name]


def _wait(predicate: Any, timeout: float, what: str, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def _pod_counts(cluster: LocalCluster, pod_id: str) -> dict[str, int]:
    for pod in cluster.cloud.state()["pods"] + cluster.cloud.state()["terminated_pods"]:
        if pod["id"] == pod_id:
            return dict(pod.get("calls", {}))
    raise AssertionError(f"pod {pod_id} unknown to the fake cloud")


def test_touched_session_lives_then_idles_out(cluster: LocalCluster) -> None:
    ttl_ms = 1500
    s = orchestrator.spawn(
        provider="runpod",
        gpu="h100",
        image=IMAGE,
        ports=[(8000, "http")],
        auth="bearer",
        user_id=42,
        idle_ttl_ms=ttl_ms,
    )
    compute = s.wait(timeout=30)
    assert compute.status == "running"
    assert compute.ports[0].url == f"https://{compute.id}-8000.proxy.runpod.net"
    assert compute.auth is not None and compute.auth.token == s.token
    info = orchestrator.info(s.id)
    assert (info.status, info.user_id, info.compute_id) == ("running", 42, compute.id)
    assert s.id in orchestrator.list_ids()

    # touches keep it alive for 2× its TTL
    end = time.monotonic() + 2 * ttl_ms / 1000
    while time.monotonic() < end:
        orchestrator.touch(s.id)
        time.sleep(0.3)
    assert orchestrator.info(s.id).status == "running"
    assert len(_pods(cluster, s.pod_name)) == 1

    # touches stop: terminated within TTL + 2 s
    stopped_touching = time.monotonic()
    terminated = [
        e
        for e in events.subscribe(
            s.id, replay=False, timeout=ttl_ms / 1000 + 5, until=("terminated",)
        )
        if e.type == "status" and e.data.get("status") == "terminated"
    ]
    elapsed = time.monotonic() - stopped_touching
    assert terminated, cluster.logs()
    assert elapsed <= ttl_ms / 1000 + 2, f"took {elapsed:.2f}s"
    assert _pods(cluster, s.pod_name) == []
    assert orchestrator.info(s.id).status == "terminated"
    assert s.id not in orchestrator.list_ids()
    with pytest.raises(NotTracked):
        orchestrator.touch(s.id)
    kinds = [e.type for e in events.history(s.id)]
    assert kinds.index("terminating") < len(kinds) - 1
    reason = next(e.data["reason"] for e in events.history(s.id) if e.type == "terminating")
    assert reason == "idle_timeout"


def test_duplicate_stops_reaper_and_expiry_make_one_delete(cluster: LocalCluster) -> None:
    s = orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=800)
    compute = s.wait(timeout=30)
    time.sleep(0.9)  # let the idle clock run out too: expiry + reaper race the stops
    for _ in range(2):
        try:
            orchestrator.stop_tracked(s.id)
        except NotTracked:
            pass
    _wait(lambda: orchestrator.info(s.id).status == "terminated", 15, "termination", cluster)
    time.sleep(2.5)  # any straggling duplicate would land by now
    counts = _pod_counts(cluster, compute.id)
    assert counts.get("deletes", 0) == 1, counts


def test_worker_killed_after_create_leaves_exactly_one_pod(cluster: LocalCluster) -> None:
    """SIGKILL right after the provider create → redelivery → one pod, tracked."""
    # Only a dedicated worker (listening on a private queue) carries the crash point.
    r = get_redis()
    r.delete("atlas:test:fault-fired:after_create")
    from atlas_tasks import client

    victim = cluster.add_worker(hostname="victim@%h", ATLAS_FAULT_KILL_AT="after_create")
    for w in cluster.workers[:-1]:
        w.stop()  # the victim must be the one that takes the spawn
    try:
        s = client.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=60_000)
        _wait(lambda: not victim.alive(), 30, "the victim worker to die", cluster)
        assert len(_pods(cluster, s.pod_name)) == 1  # created, not yet recorded
        assert orchestrator.info(s.id).status == "spawning"
        cluster.add_worker(hostname="rescuer@%h")  # redelivery after the visibility timeout
        compute = s.wait(timeout=60)
        pods = _pods(cluster, s.pod_name)
        assert [p["id"] for p in pods] == [compute.id]
        assert orchestrator.info(s.id).compute_id == compute.id
        assert cluster.cloud.state()["totals"]["creates"] >= 1
        creates_for_name = [
            p
            for p in cluster.cloud.state()["pods"] + cluster.cloud.state()["terminated_pods"]
            if p.get("name") == s.pod_name
        ]
        assert len(creates_for_name) == 1
        orchestrator.stop_tracked(s.id)
        _wait(lambda: orchestrator.info(s.id).status == "terminated", 15, "stop", cluster)
    finally:
        cluster.workers[:] = [w for w in cluster.workers if w.alive()]
        if not cluster.workers:
            cluster.add_worker()


def test_orphans_reaped_foreign_pods_and_touched_sessions_left_alone(cluster: LocalCluster) -> None:
    headers = {"Authorization": f"Bearer {cluster.cloud.api_key}"}
    base = f"{cluster.cloud.runpod_rest_url}/v2"
    body = {"image": IMAGE, "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 1}}
    orphan = httpx.post(
        f"{base}/pods", json={**body, "name": "atlas-orphan0001"}, headers=headers
    ).json()
    foreign = httpx.post(
        f"{base}/pods", json={**body, "name": "someone-elses-pod"}, headers=headers
    ).json()
    s = orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=1500)
    s.wait(timeout=30)
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        orchestrator.touch(s.id)
        if not [p for p in cluster.cloud.live_pods() if p["id"] == orphan["id"]]:
            break
        time.sleep(0.3)
    live = {p["id"] for p in cluster.cloud.live_pods()}
    assert orphan["id"] not in live, cluster.logs()
    assert foreign["id"] in live
    assert orchestrator.info(s.id).status == "running"
    assert len(_pods(cluster, s.pod_name)) == 1
    orchestrator.stop_tracked(s.id)
    httpx.delete(f"{base}/pods/{foreign['id']}", headers=headers)
    _wait(lambda: orchestrator.info(s.id).status == "terminated", 15, "stop", cluster)


def test_no_secret_in_redis_after_bearer_spawn(cluster: LocalCluster) -> None:
    api_key = cluster.cloud.api_key
    s = orchestrator.spawn(
        provider="runpod",
        gpu="h100",
        image=IMAGE,
        auth="bearer",
        api_key=api_key,
        env={"HF_TOKEN": "hf_supersecret_value"},
    )
    s.wait(timeout=30)
    assert s.token
    dump = dump_redis(cluster.redis_url).decode(errors="replace")
    for secret in (s.token, api_key, "hf_supersecret_value", cluster.env["ATLAS_SECRET_KEY"]):
        assert secret not in dump
    assert orchestrator.info(s.id).auth == "bearer"
    orchestrator.stop_tracked(s.id)
    _wait(lambda: orchestrator.info(s.id).status == "terminated", 15, "stop", cluster)
    dump = dump_redis(cluster.redis_url).decode(errors="replace")
    assert s.token not in dump and api_key not in dump


_WEB_CLIENT = """
import json, sys
from atlas_tasks import events, orchestrator
sid = sys.argv[1]
seen = []
for e in events.subscribe(sid, timeout=20, until=("terminated",)):
    seen.append([e.type, e.data.get("status") or e.data.get("reason")])
info = orchestrator.info(sid)
print(json.dumps({"seen": seen, "status": info.status}))
"""


def test_two_web_processes_see_the_same_session(cluster: LocalCluster) -> None:
    s = orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=60_000)
    env = {k: v for k, v in cluster.env.items()}
    watchers = [
        subprocess.Popen(
            [sys.executable, "-c", _WEB_CLIENT, s.id], env=env, stdout=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    s.wait(timeout=30)
    # a third "web node" touches and stops it
    toucher = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from atlas_tasks import orchestrator as o; "
            "o.touch(sys.argv[1]); o.stop_tracked(sys.argv[1])",
            s.id,
        ],
        env=env,
        timeout=60,
    )
    assert toucher.returncode == 0
    for proc in watchers:
        out, _ = proc.communicate(timeout=60)
        result = json.loads(out.strip().splitlines()[-1])
        assert result["status"] == "terminated"
        steps = [tuple(x) for x in result["seen"] if x[0] != "heartbeat"]
        # a watcher that subscribed before the pod came up saw the spawn; a later one
        # replays from `running` (the log is compacted once the session runs)
        assert steps[0] in (("status", "spawning"), ("status", "running"))
        assert ("status", "running") in steps
        assert ("terminating", "requested") in steps
        assert steps[-1] == ("status", "terminated")


def test_stop_while_spawning_leaves_no_pod(cluster: LocalCluster) -> None:
    sessions = [
        orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=60_000)
        for _ in range(12)
    ]
    # Races the spawn tasks on purpose, staggered so stops land before, during and just
    # after the provider create (each window has its own hand-over between the two).
    for i, s in enumerate(sessions):
        orchestrator.stop_tracked(s.id)
        time.sleep(0.002 * i)
    for s in sessions:
        _wait(
            lambda s=s: orchestrator.info(s.id).status == "terminated",
            20,
            f"{s.id} terminated",
            cluster,
        )
    time.sleep(1.0)
    for s in sessions:
        assert _pods(cluster, s.pod_name) == [], cluster.logs()
        assert s.id not in orchestrator.list_ids()


def test_enqueue_opens_no_result_subscription_and_get_still_works(cluster: LocalCluster) -> None:
    """Sending a task leaves the caller's result backend untouched (nothing for
    ``AsyncResult.__del__`` to clean up when Redis is gone); waiting still gets the
    stored result, even one stored before ``get()`` subscribed."""
    app = get_app()
    consumer = app.backend.result_consumer
    before = set(consumer.subscribed_to)
    sent = app.send_task("celery.accumulate", args=[41, 1], queue=C.QUEUE_MAINTENANCE)
    assert set(consumer.subscribed_to) == before
    deadline = time.monotonic() + 20
    while app.backend.get(app.backend.get_key_for_task(sent.id)) is None:
        assert time.monotonic() < deadline, "the worker never stored the result"
        time.sleep(0.05)
    assert app.AsyncResult(sent.id).get(timeout=10) == [41, 1]
