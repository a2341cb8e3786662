"""Two deployments on one redis-server and one fake cloud (issue 17, item 1, must show).

Deployment A runs in the default namespace (``atlas``: the historical key layout, pods
``atlas-...``), deployment B in ``beta`` (keys ``beta:...``, queues ``beta.compute``...,
pods ``beta-...``), each with its own Celery worker and beat, sharing the Redis (registry
and broker) and the cloud account. Neither lists, touches, infos, stops, reaps or
orphan-terminates the other's sessions or pods: B's sessions going idle while B is down
stay untouched by A (A's expiry listener sees their keys expire on the same Redis, A's
reaper and orphan scan run all along) until B comes back and reaps them itself.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest

from atlas_tasks import events, orchestrator
from atlas_tasks.config import reset_settings
from atlas_tasks.errors import NotTracked
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sessions.store import store_for
from atlas_tasks.testing.localstack import (
    LocalCluster,
    ManagedProcess,
    celery_beat,
    celery_worker,
    worker_ready,
)
from tests.integration.conftest import CLUSTER_SETTINGS
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

A, B = "atlas", "beta"
IMAGE = "ghcr.io/acme/infer:latest"
LONG_TTL_MS = 300_000
IDLE_TTL_MS = 2_000


@dataclass
class Pair:
    """Deployment A (the cluster's own worker and beat) and B (a second worker/beat pair
    with ``ATLAS_NAMESPACE=beta``) on the cluster's Redis and fake cloud."""

    cluster: LocalCluster
    env_b: dict[str, str]
    b_procs: list[ManagedProcess]

    def start_b(self) -> None:
        """Start B's worker and beat and wait until both are up."""
        worker = worker_ready(celery_worker(self.env_b, concurrency=8, hostname="wb@%h"))
        beat = celery_beat(self.env_b).start()
        self.b_procs = [worker, beat]
        beat.wait_for("Acquired lock", 60)

    def stop_b(self) -> None:
        """Stop B's worker and beat (deployment B is down)."""
        for proc in self.b_procs:
            proc.stop()
        self.b_procs = []

    def logs(self) -> str:
        """Every process's log tail, for failure messages."""
        tails = [f"== B {p.name}\n{p.log()[-3000:]}" for p in self.b_procs]
        return self.cluster.logs() + "\n" + "\n".join(tails)


@pytest.fixture(scope="module")
def _pair() -> Iterator[Pair]:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(fakecloud={"boot_delay_s": 0.0}, **CLUSTER_SETTINGS) as cluster:
        env_b = {**cluster.env, "ATLAS_NAMESPACE": B}
        # B's first start on this Redis marks its dataset, as LocalCluster does for A.
        store_for(get_redis(cluster.redis_url), namespace=B).ensure_epoch()
        pair = Pair(cluster, env_b, [])
        try:
            pair.start_b()
            yield pair
        finally:
            pair.stop_b()


@pytest.fixture
def pair(_pair: Pair, monkeypatch: pytest.MonkeyPatch) -> Pair:
    for key, value in _pair.cluster.env.items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    return _pair


def use(monkeypatch: pytest.MonkeyPatch, namespace: str) -> None:
    """Make this process a caller of deployment ``namespace``."""
    monkeypatch.setenv("ATLAS_NAMESPACE", namespace)
    reset_settings()


def wait_until(check: Callable[[], object], timeout: float, what: str, pair: Pair) -> None:
    """Poll ``check`` until it holds; fail with every process's log after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{pair.logs()}")


def live(pair: Pair, pod_name: str) -> bool:
    """Whether a pod of that name is live at the fake cloud."""
    return any(p["name"] == pod_name for p in pair.cluster.cloud.live_pods())


def status(namespace: str, session_id: str) -> str | None:
    """The session's status as its own deployment recorded it (raw Redis read)."""
    value = get_redis().hget(f"{namespace}:session:{session_id}", "status")
    return None if value is None else str(value)


def sweeps(namespace: str) -> int:
    """How many reaper sweeps the deployment ran so far."""
    return int(get_redis().hget(f"{namespace}:reaper:stats", "sweeps") or 0)


def rogue_pod(pair: Pair, name: str) -> str:
    """Create a pod behind every deployment's back (an orphan of whoever owns the prefix)."""
    cloud = pair.cluster.cloud
    body = {"image": IMAGE, "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 1}, "name": name}
    reply = httpx.post(
        f"{cloud.runpod_rest_url}/v2/pods",
        json=body,
        headers={"Authorization": f"Bearer {cloud.api_key}"},
    )
    reply.raise_for_status()
    return str(reply.json()["id"])


def rearm(namespace: str, session_id: str, ttl_ms: int) -> None:
    """Give a running session a short idle clock, the way touch() arms one (idle TTL, the
    alive key's PX, the deadline index), so it runs out while its deployment is down."""
    r = get_redis()
    seconds, micros = r.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    with r.pipeline(transaction=True) as pipe:
        pipe.hset(f"{namespace}:session:{session_id}", "idle_ttl_ms", ttl_ms)
        pipe.set(f"{namespace}:alive:{session_id}", ttl_ms, px=ttl_ms)
        pipe.zadd(f"{namespace}:deadlines", {session_id: now_ms + ttl_ms})
        pipe.execute()


def spawn(ttl_ms: int) -> Any:
    """Spawn a session of the current deployment."""
    return orchestrator.spawn(
        provider="runpod", gpu="h100", image=IMAGE, ports=[(8000, "http")], idle_ttl_ms=ttl_ms
    )


def test_two_namespaces_never_see_touch_or_reap_each_other(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = get_redis()
    use(monkeypatch, A)
    a_keep, a_idle = spawn(LONG_TTL_MS), spawn(IDLE_TTL_MS)
    assert a_keep.wait(timeout=60).status == "running"
    use(monkeypatch, B)
    b_keep, b_idle = spawn(LONG_TTL_MS), spawn(LONG_TTL_MS)
    assert b_keep.wait(timeout=60).status == "running", pair.logs()
    assert b_idle.wait(timeout=60).status == "running", pair.logs()

    # pods carry their deployment's prefix; A's keys keep the historical literal layout
    assert a_keep.pod_name == f"atlas-{a_keep.id}" and b_keep.pod_name == f"beta-{b_keep.id}"
    assert r.hget(f"atlas:session:{a_keep.id}", "status") == "running"
    assert r.exists(f"atlas:alive:{a_keep.id}") and r.sismember("atlas:sessions", a_keep.id)
    assert r.zscore("atlas:deadlines", a_keep.id) is not None
    # its replay log (compacted once running: kept, empty, for its last id) and replay
    assert r.exists(f"atlas:events-log:{a_keep.id}")
    assert [e.type for e in events.history(a_keep.id, client=r, namespace="atlas")] == ["status"]
    assert r.hget(f"beta:session:{b_keep.id}", "status") == "running"
    assert r.sismember("beta:sessions", b_keep.id) and r.exists(f"beta:alive:{b_keep.id}")
    assert not r.exists(f"atlas:session:{b_keep.id}", f"atlas:alive:{b_keep.id}")
    assert not r.exists(f"beta:session:{a_keep.id}")

    # neither lists, touches, infos or stops the other's sessions
    use(monkeypatch, A)
    assert {a_keep.id, a_idle.id} <= set(orchestrator.list_ids())
    assert not {b_keep.id, b_idle.id} & set(orchestrator.list_ids())
    for call in (orchestrator.touch, orchestrator.info, orchestrator.stop_tracked):
        with pytest.raises(NotTracked):
            call(b_keep.id)
    use(monkeypatch, B)
    assert set(orchestrator.list_ids()) >= {b_keep.id, b_idle.id}
    assert not {a_keep.id, a_idle.id} & set(orchestrator.list_ids())
    for call in (orchestrator.touch, orchestrator.info, orchestrator.stop_tracked):
        with pytest.raises(NotTracked):
            call(a_keep.id)
    orchestrator.touch(b_keep.id)
    assert orchestrator.info(b_keep.id).status == "running"

    # A's idle session is reaped by A while both run; B's sessions are untouched
    wait_until(lambda: status(A, a_idle.id) == "terminated", 30, "A reaps its idle session", pair)
    assert not live(pair, a_idle.pod_name)
    assert status(B, b_keep.id) == status(B, b_idle.id) == "running"
    assert live(pair, b_keep.pod_name) and live(pair, b_idle.pod_name)

    # B goes down; one of its sessions runs out of idle time, and orphans appear for both
    pair.stop_b()
    rearm(B, b_idle.id, IDLE_TTL_MS)
    a_rogue = rogue_pod(pair, f"atlas-rogue{uuid.uuid4().hex[:8]}")
    b_rogue_name = f"beta-rogue{uuid.uuid4().hex[:8]}"
    rogue_pod(pair, b_rogue_name)
    wait_until(lambda: not r.exists(f"beta:alive:{b_idle.id}"), 15, "B's idle clock expires", pair)
    # A's orphan scan kills A's orphan (so it scanned after B's pods were past the grace)...
    wait_until(
        lambda: all(p["id"] != a_rogue for p in pair.cluster.cloud.live_pods()),
        30,
        "A terminates its own orphan",
        pair,
    )
    # ...and A keeps sweeping for a few more rounds with B's expired session and orphan there
    after = sweeps(A)
    wait_until(lambda: sweeps(A) >= after + 3, 30, "three more sweeps of A", pair)
    assert status(B, b_idle.id) == "running" and live(pair, b_idle.pod_name), (
        "A reaped a session of B"
    )
    assert live(pair, b_rogue_name), "A's orphan scan terminated a pod of B"
    assert live(pair, b_keep.pod_name) and status(B, b_keep.id) == "running"
    assert r.hget(f"atlas:session:{b_idle.id}", "status") is None

    # B comes back and reaps its own idle session and its own orphan; A's sessions survive
    pair.start_b()
    wait_until(lambda: status(B, b_idle.id) == "terminated", 40, "B reaps its idle session", pair)
    wait_until(lambda: not live(pair, b_rogue_name), 40, "B terminates its own orphan", pair)
    assert not live(pair, b_idle.pod_name)
    assert live(pair, b_keep.pod_name) and live(pair, a_keep.pod_name)
    use(monkeypatch, A)
    assert orchestrator.info(a_keep.id).status == "running"
    orchestrator.touch(a_keep.id)

    # each stops its own
    orchestrator.stop_tracked(a_keep.id)
    use(monkeypatch, B)
    orchestrator.stop_tracked(b_keep.id)
    wait_until(
        lambda: status(A, a_keep.id) == status(B, b_keep.id) == "terminated", 40, "both stops", pair
    )
    assert not live(pair, a_keep.pod_name) and not live(pair, b_keep.pod_name)


def test_each_namespace_has_its_own_beat_queues_and_reaper_state(pair: Pair) -> None:
    r = get_redis()
    # one beat lock and one schedule per deployment (redbeat key prefix <namespace>:redbeat:)
    assert r.exists("atlas:redbeat::lock") and r.exists("beta:redbeat::lock")
    assert r.exists("atlas:redbeat:atlas-reaper") and r.exists("beta:redbeat:atlas-reaper")
    # each sweeps on its own: both last-sweep records are fresh
    seconds, micros = r.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    for ns in (A, B):
        key = f"{ns}:reaper:last-sweep"
        wait_until(partial(r.exists, key), 15, f"a sweep of {ns}", pair)
        last = json.loads(r.get(key) or "{}")
        assert now_ms - int(last["at_ms"]) < 15_000, (ns, last)
    # B's worker consumes B's queues only, A's worker A's only
    from atlas_tasks.celery_app import get_app

    reply = get_app().control.inspect(timeout=3).active_queues() or {}
    consumed = {worker: {q["name"] for q in queues} for worker, queues in reply.items()}
    assert {"beta.compute", "beta.jobs", "beta.fly", "beta.maintenance"} in consumed.values()
    assert {"compute", "jobs", "fly", "maintenance"} in consumed.values()
