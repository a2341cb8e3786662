"""The live cost meter and GPU-idle reaping end to end: real redis-server, Celery worker
and beat (the meter, GPU watch and billing reconciliation run from beat), fake cloud.

Sessions opt in to GPU-idle reaping through the spawn options (so they are in the watch
index the watcher reads without a deployment-wide policy); the fake cloud's pods report
pinned utilisation (unpinned, they report a load above the threshold).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from atlas_tasks import events, orchestrator, quotas
from atlas_tasks.testing.localstack import LocalCluster
from tests.integration.conftest import CLUSTER_SETTINGS
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"
WINDOW_MS = 1_500


@pytest.fixture(scope="module")
def _cluster() -> Iterator[LocalCluster]:
    """This module's cluster: the cost meter every second, GPU watch every 300 ms."""
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(
        fakecloud={"boot_delay_s": 0.0},
        meter_interval_ms=1_000,
        gpu_watch_interval_ms=300,
        billing_reconcile_interval_ms=1_000,
        **CLUSTER_SETTINGS,
    ) as cluster:
        yield cluster


def _wait(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    cluster: LocalCluster,
    tick: Callable[[], None] = lambda: None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        tick()
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def _types(session_id: str) -> list[str]:
    return [e.type for e in events.history(session_id)]


def test_idle_gpus_are_reaped_while_touched_busy_ones_live_and_cost_is_metered(
    cluster: LocalCluster,
) -> None:
    idle, busy = (
        orchestrator.spawn(
            provider="runpod",
            gpu="h100",
            image=IMAGE,
            idle_ttl_ms=60_000,
            user_id="alice",
            gpu_idle_below_pct=10,
            gpu_idle_window_ms=WINDOW_MS,
        )
        for _ in range(2)
    )
    idle_pod, busy_pod = idle.wait(timeout=30), busy.wait(timeout=30)
    cluster.cloud.set_gpu_util(idle_pod.id, 0)
    cluster.cloud.set_gpu_util(busy_pod.id, 90)
    opted_at = time.monotonic()  # idle from here on (the unpinned load is above 10%)

    def touch_both() -> None:
        for s in (idle, busy):
            try:
                orchestrator.touch(s.id)
            except Exception:
                pass  # the idle one stops being touchable once it is terminating

    # Heartbeats continue all along: the idle-GPU session still ends, for its GPUs.
    _wait(
        lambda: orchestrator.info(idle.id).status == "terminated",
        30,
        "the GPU-idle session to be reaped",
        cluster,
        tick=touch_both,
    )
    assert time.monotonic() - opted_at >= WINDOW_MS / 1000
    terminating = [e for e in events.history(idle.id) if e.type == "terminating"]
    assert [e.data["reason"] for e in terminating] == ["gpu_idle"]
    assert orchestrator.info(idle.id).reason == "gpu_idle"
    assert idle_pod.id not in {p["id"] for p in cluster.cloud.live_pods()}

    # The busy one lives on for several more windows, heartbeats keeping its idle clock.
    end = time.monotonic() + 3 * WINDOW_MS / 1000
    while time.monotonic() < end:
        touch_both()
        time.sleep(0.2)
    first = orchestrator.info(busy.id)
    assert first.status == "running" and "terminating" not in _types(busy.id)
    assert busy_pod.id in {p["id"] for p in cluster.cloud.live_pods()}

    # accrued_usd grows with Redis time; the meter's `cost` events arrive every second.
    assert first.accrued_usd is not None and first.accrued_usd > 0
    _wait(
        lambda: (orchestrator.info(busy.id).accrued_usd or 0) > (first.accrued_usd or 0),
        5,
        "accrued_usd to grow",
        cluster,
    )

    # the replay log keeps the latest `cost` event: a later one replaces the first
    def latest_cost() -> events.Event | None:
        return next((e for e in events.history(busy.id) if e.type == "cost"), None)

    _wait(lambda: latest_cost() is not None, 10, "a cost event", cluster)
    first_cost = latest_cost()
    assert first_cost is not None
    _wait(
        lambda: (latest_cost() or first_cost).data["until_ms"] > first_cost.data["until_ms"],
        10,
        "a later cost event",
        cluster,
    )
    costs = [e for e in events.history(busy.id) if e.type == "cost"]
    assert len(costs) == 1
    assert all(
        e.data["usd"] > 0 and e.data["cost_per_hour"] == busy_pod.cost_per_hour
        for e in (first_cost, *costs)
    )
    # ... and their spend is the user's month-to-date total (the ended one's included)
    _wait(
        lambda: quotas.usage("user", "alice").month_to_date_usd > 0,
        10,
        "month-to-date spend",
        cluster,
    )
    # the billing reconciliation compares it with the fake cloud's bill for the pod
    _wait(lambda: "cost_drift" in _types(busy.id), 10, "a cost_drift event", cluster)
    drift = next(e for e in events.history(busy.id) if e.type == "cost_drift")
    assert drift.data["compute_id"] == busy_pod.id and drift.data["billed_usd"] > 0

    orchestrator.stop_tracked(busy.id)
    _wait(lambda: orchestrator.info(busy.id).status == "terminated", 15, "stop", cluster)
    # the meter charges the ended session's last part, once
    _wait(
        lambda: any(e.data.get("final") for e in events.history(busy.id) if e.type == "cost"),
        10,
        "the final cost event",
        cluster,
    )
