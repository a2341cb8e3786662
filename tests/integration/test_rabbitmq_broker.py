"""RabbitMQ as the Celery broker (``ATLAS_BROKER_URL=amqp://...``), registry on Redis.

A private ``rabbitmq-server`` node (:mod:`tests.support.rabbitmq`), a real ``redis-server``,
a Celery worker and beat whose broker is RabbitMQ, and the fake cloud: spawn, touch,
idle reap (beat's sweep and the keyspace fast path both enqueue through RabbitMQ) and a
serverless job run end to end. In CI a missing ``rabbitmq-server`` is a failure, never a
skip (``.ci/run`` installs it).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from atlas_tasks import events, jobs, orchestrator
from atlas_tasks.celery_app import get_app

# Moved to tests/support/ (atlas_tasks.testing.localstack) by the packaging change.
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.harness import in_ci, redis_available
from tests.support.rabbitmq import RabbitMQServer, rabbitmq_server_binary

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"


@pytest.fixture(scope="module")
def rabbit_cluster() -> Iterator[tuple[LocalCluster, RabbitMQServer]]:
    """RabbitMQ + Redis + worker + beat + fake cloud, for the module."""
    for ok, what in (
        (rabbitmq_server_binary() is not None, "rabbitmq-server"),
        (redis_available(), "redis-server"),
    ):
        if not ok:
            if in_ci():
                pytest.fail(f"{what} is required in CI (.ci/run installs it)")
            pytest.skip(f"{what} not installed")
    with (
        RabbitMQServer() as rabbit,
        LocalCluster(
            broker_url=rabbit.url,
            fakecloud={"boot_delay_s": 0.0},
            concurrency=8,
            orphan_grace_ms=1500,
            orphan_scan_interval_ms=1000,
            http_max_backoff_s=1,
        ) as cluster,
    ):
        yield cluster, rabbit


@pytest.fixture
def cluster(rabbit_cluster: tuple[LocalCluster, RabbitMQServer]) -> LocalCluster:
    """The module's cluster with this process's settings pointed at it."""
    cluster, _ = rabbit_cluster
    cluster.apply_env()
    return cluster


def _wait(predicate: Callable[[], bool], timeout: float, what: str, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def test_the_broker_is_rabbitmq(
    cluster: LocalCluster, rabbit_cluster: tuple[LocalCluster, RabbitMQServer]
) -> None:
    _, rabbit = rabbit_cluster
    app = get_app()
    assert app.conf.broker_url == rabbit.url
    assert app.connection_for_write().transport.driver_type == "amqp"
    # The Redis-only transport options are not sent to RabbitMQ; results stay on Redis.
    assert "visibility_timeout" not in app.conf.broker_transport_options
    assert app.conf.result_backend == cluster.redis_url
    assert "amqp" in " ".join(w.log() for w in cluster.workers)


def test_spawn_touch_idle_reap(cluster: LocalCluster) -> None:
    ttl_ms = 1500
    s = orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=ttl_ms)
    compute = s.wait(timeout=30)
    assert compute.status == "running"
    # Touches keep it alive well past its TTL.
    end = time.monotonic() + 2 * ttl_ms / 1000
    while time.monotonic() < end:
        orchestrator.touch(s.id)
        time.sleep(0.2)
    assert orchestrator.info(s.id).status == "running"
    assert any(p["id"] == compute.id for p in cluster.cloud.live_pods())
    # Touches stop: the terminate goes through RabbitMQ and the pod is deleted.
    terminated = [
        e
        for e in events.subscribe(
            s.id, replay=False, timeout=ttl_ms / 1000 + 10, until=("terminated",)
        )
        if e.type == "status" and e.data.get("status") == "terminated"
    ]
    assert terminated, cluster.logs()
    _wait(
        lambda: all(p["id"] != compute.id for p in cluster.cloud.live_pods()),
        10,
        "the idle pod to be deleted",
        cluster,
    )


def test_explicit_stop_and_job_end_to_end(cluster: LocalCluster) -> None:
    s = orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=60_000)
    pod = s.wait(timeout=30).id
    orchestrator.stop_tracked(s.id)
    _wait(
        lambda: (
            orchestrator.info(s.id).status == "terminated"
            and all(p["id"] != pod for p in cluster.cloud.live_pods())
        ),
        20,
        "the stopped session's pod to be deleted",
        cluster,
    )

    job = jobs.submit(endpoint="ep-rabbit", input={"output": {"answer": 42}})
    assert job.wait(timeout=30) == {"answer": 42}
    assert jobs.get(job.id).status == "completed"
