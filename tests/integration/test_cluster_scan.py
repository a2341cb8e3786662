"""Whole-index reads and the GPU-idle watch index on a real 3-master Redis Cluster.

The registry's sets are read with ``SSCAN``/``ZSCAN`` through the cluster client, shard by
shard (each shard's index lives on its slot's master), and the GPU-idle watch index is
written by the create script: a key outside the session's slot would fail that script
under the cluster's own slot checks. The cluster is :mod:`test_cluster_sessions`'s (its
``_cluster`` fixture, started again for this module: worker, beat, fake cloud).
"""

from __future__ import annotations

import time

import pytest

from atlas_tasks import orchestrator
from atlas_tasks.deps import Dependencies
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sessions.gpu_idle import GpuIdleWatcher
from atlas_tasks.sessions.meter import CostMeter
from atlas_tasks.sessions.store import store_for
from atlas_tasks.testing.localstack import LocalCluster
from tests.integration.test_cluster_sessions import _cluster

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"

__all__ = ["_cluster"]


def test_scans_and_gpu_watch_index_work_across_the_cluster_shards(cluster: LocalCluster) -> None:
    store = store_for(get_redis())
    assert store.ks.tagged and len(store.shards) == 16
    plain = [
        orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=60_000)
        for _ in range(6)
    ]
    opted = orchestrator.spawn(
        provider="runpod",
        gpu="h100",
        image=IMAGE,
        idle_ttl_ms=60_000,
        gpu_idle_below_pct=10,
        gpu_idle_window_ms=60_000,
    )
    for s in [*plain, opted]:
        s.wait(timeout=30)
    ids = {s.id for s in plain} | {opted.id}

    listed = store.list_ids()
    assert ids <= set(listed) and listed == sorted(set(listed))
    scanned = [sid for batch in store.iter_ids(2) for sid in batch]
    assert ids <= set(scanned) and len(scanned) == len(set(scanned))
    # the shards of these sessions are spread over several masters: each was scanned
    assert len({store.ks.shard_index(sid) for sid in ids}) > 1

    watched = {sid for batch in store.iter_gpu_watch_ids() for sid in batch}
    assert watched == {opted.id}
    assert get_redis().sismember(store.names_of(opted.id).gpu_watch, opted.id)

    meter = CostMeter(Dependencies.default())
    assert ids <= set(meter.candidates())  # running: tracked and in the meter's index

    # no deployment-wide policy: only the opted-in session is read (its pod reports a
    # moving load above 10%, so it is polled, not idle)
    report = GpuIdleWatcher(Dependencies.default()).watch(lambda ids, reason: None)
    assert report.polled == [opted.id] and report.errors == []

    # once it ended, the next watch prunes it from the index
    orchestrator.stop_tracked(opted.id)
    deadline = time.monotonic() + 30
    while orchestrator.info(opted.id).status != "terminated":
        assert time.monotonic() < deadline, f"stop did not end the session\n{cluster.logs()}"
        time.sleep(0.05)
    assert not store.is_tracked(opted.id)
    GpuIdleWatcher(Dependencies.default()).watch(lambda ids, reason: None)
    assert {sid for batch in store.iter_gpu_watch_ids() for sid in batch} == set()
