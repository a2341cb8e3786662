"""Every key a deployment writes is in its namespace (issue 17, item 1).

A whole deployment with ``ATLAS_NAMESPACE=x`` (worker, beat, expiry listener, reaper with
orphan scans, fake cloud) runs a session, job and orphan cycle on a fresh redis-server,
and this process drives the stores the cycle does not reach (quotas, the fleet rate
budget, the Fly streamer and token store, the mock provider's Redis state, metrics,
deploy/logs events). Afterwards ``SCAN`` finds no key outside ``x:*`` except Celery's own
(the ``x.compute``... queues, kombu's bindings and unacked bookkeeping, task results), and
no key or queue of the default namespace at all.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from functools import partial

import httpx
import pytest

import atlas_tasks as atlas
from atlas_tasks import events, jobs, metrics, orchestrator
from atlas_tasks.fly import store as fly_store
from atlas_tasks.fly.token_storage import RedisTokenStorage, TokenRecord
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.providers.budget import RateBudget
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.quotas import quota_store
from atlas_tasks.quotas.store import Limits
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster
from tests.integration.conftest import CLUSTER_SETTINGS
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

NS = "x"
IMAGE = "ghcr.io/acme/infer:latest"
#: Keys Celery and kombu keep in a Redis broker / result backend: the namespace's queues
#: (``x.compute``...), kombu's queue bindings and unacked-message bookkeeping, results.
CELERY_KEYS = re.compile(
    r"^(x\.(compute|jobs|fly|maintenance)"
    r"|_kombu\..*"
    r"|unacked(_index|_mutex)?"
    r"|celery-task-meta-.*)$"
)


@pytest.fixture(scope="module")
def _cluster() -> Iterator[LocalCluster]:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    settings = {**CLUSTER_SETTINGS, "namespace": NS}
    with LocalCluster(fakecloud={"boot_delay_s": 0.0}, **settings) as cluster:
        yield cluster


@pytest.fixture
def cluster(_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> LocalCluster:
    from atlas_tasks.config import reset_settings

    for key, value in _cluster.env.items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    return _cluster


def wait_until(check: Callable[[], object], timeout: float, what: str, c: LocalCluster) -> None:
    """Poll ``check`` until it holds; fail with the processes' logs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{c.logs()}")


def terminated(session_id: str) -> bool:
    """Whether the session's record (in ``x``) says terminated."""
    return bool(get_redis().hget(f"x:session:{session_id}", "status") == "terminated")


def test_every_key_of_a_namespaced_deployment_is_in_its_namespace(
    cluster: LocalCluster,
) -> None:
    r = get_redis()
    assert keyspace().namespace == NS

    # sessions: a stopped one (with a user index and events) and one that idles out
    kept = orchestrator.spawn(
        provider="runpod", gpu="h100", image=IMAGE, ports=[(8000, "http")], user_id=7
    )
    idle = orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=1500)
    assert kept.wait(timeout=60).status == "running", cluster.logs()
    assert kept.pod_name == f"x-{kept.id}"
    orchestrator.touch(kept.id)
    assert orchestrator.info(kept.id).status == "running"
    assert [s.id for s in orchestrator.list_sessions(user_id=7)] == [kept.id]
    assert [e.type for e in events.history(kept.id)][0] == "status"
    idle.wait(timeout=60)
    orchestrator.stop_tracked(kept.id)
    for sid in (kept.id, idle.id):
        wait_until(partial(terminated, sid), 40, f"session {sid} terminated", cluster)

    # an orphan of this namespace, terminated by its orphan scan (fenced per pod)
    cloud = cluster.cloud
    orphan = httpx.post(
        f"{cloud.runpod_rest_url}/v2/pods",
        headers={"Authorization": f"Bearer {cloud.api_key}"},
        json={
            "image": IMAGE,
            "gpu": {"id": "NVIDIA H100 80GB HBM3", "count": 1},
            "name": f"x-rogue{uuid.uuid4().hex[:8]}",
        },
    ).json()
    wait_until(
        lambda: all(p["id"] != orphan["id"] for p in cloud.live_pods()),
        40,
        "the orphan terminated",
        cluster,
    )

    # a serverless job
    job = jobs.submit(endpoint=f"ep-{uuid.uuid4().hex[:8]}", input={"output": {"a": 1}})
    assert job.wait(timeout=30) == {"a": 1}

    # the stores no worker reached in this cycle, driven from here
    quotas = quota_store(r)
    quotas.set_limits("user", "u1", Limits.build(max_sessions=2, monthly_usd=10))
    assert quotas.try_admit("s1", user_id="u1", tenant_id="t1", hourly_usd=1.0).admitted
    quotas.release("s1")
    quotas.record_spend(0.5, user_id="u1")
    budget = RateBudget(r, provider="runpod", api="management", key_fingerprint="fp", per_minute=60)
    assert budget.try_acquire() == 0
    now_ms = int(r.time()[0]) * 1000
    fly_store.register_subscriber(r, "app1", "sub1", now_ms=now_ms, ttl_ms=30_000)
    assert fly_store.mark_start(r, "app1")
    assert fly_store.streamer_lease(r, "app1", "owner1", 30_000).acquire()
    RedisTokenStorage(r).put("app1", "cached", TokenRecord("tok", int(time.time()) + 600))
    events.publish("ticket1", "status", {"status": "queued"}, topic="deploy")
    events.publish("app1", "log", {"line": "hi"}, topic="logs")
    metrics.incr("terminate_retries")
    mock = atlas.get_provider("mock", redis_url=cluster.redis_url)
    assert isinstance(mock, MockProvider) and mock.state == "redis"
    atlas.spawn_compute(provider=mock, name="mock1", auth="bearer", ports=[(8000, "http")])

    keys = sorted(str(k) for k in r.scan_iter(count=1000))
    outside = [k for k in keys if not k.startswith("x:") and not CELERY_KEYS.match(k)]
    assert outside == [], f"keys outside the namespace: {outside}"
    assert not [k for k in keys if k.startswith("atlas:")]
    assert not {"compute", "jobs", "fly", "maintenance"} & set(keys)
    # and the cycle did write what it should, under the namespace
    for expected in (
        f"x:session:{kept.id}",
        f"x:events-log:{kept.id}",
        "x:user-sessions:7",
        f"x:job:{job.id}",
        f"x:job-events-log:{job.id}",
        "x:epoch",
        "x:reaper:stats",
        "x:reaper:last-sweep",
        "x:redbeat::lock",
        "x:redbeat:atlas-reaper",
        "x:quota:user:u1:limits",
        "x:fly:logs-subs:app1",
        "x:fly:logs-lock:app1",
        "x:fly:token:app1:cached",
        "x:deploy-events-log:ticket1",
        "x:mock:computes",
        "x:metrics:c:terminate_retries",
    ):
        assert expected in keys, (expected, keys)
    assert any(k.startswith("x:quota:user:u1:spend:") for k in keys), keys
    assert any(k.startswith("x:ratebudget:runpod:management:fp") for k in keys), keys
    assert any(k.startswith("x:fence:pod:runpod:") for k in keys), keys
