"""The session registry on a real 3-master Redis Cluster (issue 17, "Redis Cluster").

``LocalCluster(redis_cluster=True)`` puts the registry and events on a private cluster
(``ATLAS_REDIS_URL=redis+cluster://...``, the tagged key layout with 16 registry shards)
and Celery's broker, results and redbeat on a private plain Redis: the supported
combination. Every script of the registry, the quotas and the meter then runs under the
cluster's own slot checks, so a script that touched two slots would fail here.

The orchestrator's end-to-end scenarios are run again on this cluster (imported from
``test_orchestrator``: the module's ``_cluster`` fixture below replaces theirs), plus what
only a cluster shows: shards spread over the masters, the expiry listener hearing every
master, quotas released after every end, the meter's owed spend applied once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from atlas_tasks import events, orchestrator, quotas
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sessions.store import store_for
from atlas_tasks.testing.localstack import LocalCluster
from tests.integration.conftest import CLUSTER_SETTINGS
from tests.integration.test_orchestrator import (
    test_duplicate_stops_reaper_and_expiry_make_one_delete,
    test_orphans_reaped_foreign_pods_and_touched_sessions_left_alone,
    test_stop_while_spawning_leaves_no_pod,
    test_touched_session_lives_then_idles_out,
    test_two_web_processes_see_the_same_session,
    test_worker_killed_after_create_leaves_exactly_one_pod,
)
from tests.support.cluster import cluster_binaries_missing
from tests.support.harness import in_ci

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"

# The orchestrator scenarios, collected here too (against this module's cluster).
__all__ = [
    "test_duplicate_stops_reaper_and_expiry_make_one_delete",
    "test_orphans_reaped_foreign_pods_and_touched_sessions_left_alone",
    "test_stop_while_spawning_leaves_no_pod",
    "test_touched_session_lives_then_idles_out",
    "test_two_web_processes_see_the_same_session",
    "test_worker_killed_after_create_leaves_exactly_one_pod",
]

#: What Redis or redis-py say when a script or transaction spans slots.
SLOT_ERRORS = ("CROSSSLOT", "same slot", "non local key", "pipelined function")


@pytest.fixture(scope="module")
def _cluster() -> Iterator[LocalCluster]:
    """Registry on a 3-master cluster; broker, results, redbeat on a plain Redis; the
    meter every second."""
    missing = cluster_binaries_missing()
    if missing is not None:
        if in_ci():
            pytest.fail(f"{missing} is required in CI (.ci/run installs it)")
        pytest.skip(f"{missing} not installed")
    with LocalCluster(
        redis_cluster=True,
        fakecloud={"boot_delay_s": 0.0},
        meter_interval_ms=1_000,
        **CLUSTER_SETTINGS,
    ) as cluster:
        yield cluster
        logs = cluster.logs()
        assert not [e for e in SLOT_ERRORS if e in logs], logs


def _wait(predicate: Callable[[], Any], timeout: float, what: str, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def _owner_of_slot(cluster: LocalCluster, slot: int) -> int:
    """The port of the master serving ``slot`` (from the cluster's slot map)."""
    assert cluster.redis_cluster is not None
    node = cluster.redis_cluster.node_client(cluster.redis_cluster.ports[0])
    try:
        for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
    finally:
        node.close()
    raise AssertionError(f"slot {slot} is not served")


def _node_of(cluster: LocalCluster, key: str) -> int:
    """The port of the master holding ``key`` (asked directly, not through routing)."""
    port = _owner_of_slot(cluster, redis.crc.key_slot(key.encode()))
    assert cluster.redis_cluster is not None
    node = cluster.redis_cluster.node_client(port)
    try:
        assert node.exists(key), f"{key} is not on its slot's master {port}"
    finally:
        node.close()
    return port


def _ended(session_id: str) -> Callable[[], bool]:
    return lambda: orchestrator.info(session_id).status == "terminated"


def test_the_registry_is_on_the_cluster_in_the_tagged_layout(cluster: LocalCluster) -> None:
    assert cluster.env["ATLAS_REDIS_URL"].startswith("redis+cluster://")
    assert not cluster.env["ATLAS_BROKER_URL"].startswith("redis+cluster://")
    ks = keyspace()
    assert ks.tagged and ks.shards == 16
    # every shard's keys in one slot; the shards spread over all three masters
    slots = {redis.crc.key_slot(n.deadlines.encode()) for n in store_for(get_redis()).shards}
    assert len(slots) == 16
    assert len({_owner_of_slot(cluster, slot) for slot in slots}) == 3


def test_sessions_end_to_end_across_the_masters(cluster: LocalCluster) -> None:
    quotas.set_limits("user", "alice", max_sessions=50)
    idle = [
        orchestrator.spawn(
            provider="runpod", gpu="h100", image=IMAGE, user_id="alice", idle_ttl_ms=1_200
        )
        for _ in range(12)
    ]
    kept = orchestrator.spawn(
        provider="runpod", gpu="h100", image=IMAGE, user_id="alice", idle_ttl_ms=60_000
    )
    for s in [*idle, kept]:
        assert s.wait(timeout=30).status == "running"
    store = store_for(get_redis())
    records = {s.id: store.keys(s.id).record for s in [*idle, kept]}
    # the sessions' records live on every master
    assert len({_node_of(cluster, key) for key in records.values()}) == 3
    assert quotas.usage("user", "alice").sessions == 13

    # replay of a running session starts at `running` (compacted log, rebuilt from the
    # record), with the pod
    (first,) = [e for e in events.history(kept.id) if e.type == "status"]
    assert first.data["status"] == "running" and first.data["compute"]["id"]

    # the idle ones end (expiry listener on every master, or the sweep), visibly, once
    for s in idle:
        _wait(_ended(s.id), 20, "idle reap", cluster)
        kinds = [e.type for e in events.history(s.id)]
        assert kinds.count("terminating") == 1 and kinds[-1] in ("status", "cost")
    live_pods = {p["name"] for p in cluster.cloud.live_pods()}
    assert {s.pod_name for s in idle}.isdisjoint(live_pods)
    assert kept.pod_name in live_pods
    # each end gave its quota reservation back (released right after the end script)
    _wait(lambda: quotas.usage("user", "alice").sessions == 1, 10, "quota release", cluster)

    # touch, info and the user's list work across shards, sync and asyncio
    orchestrator.touch(kept.id)
    listed = orchestrator.list_sessions(user_id="alice", limit=100)
    assert kept.id in [row.id for row in listed]
    assert [row.id for row in listed if row.status == "running"] == [kept.id]
    assert set(orchestrator.list_ids()) >= {kept.id}

    async def async_calls() -> tuple[str, list[str]]:
        await orchestrator.atouch(kept.id)
        info = await orchestrator.ainfo(kept.id)
        rows = await orchestrator.alist_sessions(user_id="alice", limit=100)
        return info.status, [row.id for row in rows]

    status, async_listed = asyncio.run(async_calls())
    assert status == "running" and kept.id in async_listed

    # the meter charges across the cluster: the spend reaches the user's month (applied
    # from the record's owed spend, once), and the stop's final charge is made
    _wait(lambda: quotas.usage("user", "alice").month_to_date_usd > 0, 15, "spend", cluster)
    orchestrator.stop_tracked(kept.id)
    _wait(lambda: orchestrator.info(kept.id).status == "terminated", 15, "stop", cluster)
    _wait(lambda: quotas.usage("user", "alice").sessions == 0, 10, "last release", cluster)
    _wait(
        lambda: any(e.data.get("final") for e in events.history(kept.id) if e.type == "cost"),
        15,
        "the final cost event",
        cluster,
    )
    assert not [p for p in cluster.cloud.live_pods() if p["name"] == kept.pod_name]
