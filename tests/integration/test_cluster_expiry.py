"""The expiry listener on a real 3-master Redis Cluster: keyspace notifications are sent
by the node that owns the key, so the listener must hear every primary.

No worker or beat here (the session-scoped ``redis_cluster`` fixture): an idle session
can only be claimed by the listener, so a listener that heard one node would miss the
sessions whose shard lives on the others.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Iterator

import pytest
import redis

from atlas_tasks.config import reset_settings
from atlas_tasks.redis_conn import client_for_url, reset_redis_clients
from atlas_tasks.sessions.expiry_listener import ExpiryListener
from atlas_tasks.sessions.store import SessionStore
from atlas_tasks.testing.localstack import RedisClusterServer
from tests.support.cluster import flush_cluster, redis_cluster  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture
def cluster_url(
    redis_cluster: RedisClusterServer,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    flush_cluster(redis_cluster)
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_cluster.url)
    reset_settings()
    reset_redis_clients()
    yield redis_cluster.url
    reset_settings()
    reset_redis_clients()


def _master_of(cluster: RedisClusterServer, key: str) -> int:
    node = cluster.node_client(cluster.ports[0])
    try:
        slot = redis.crc.key_slot(key.encode())
        for start, end, master, *_ in node.execute_command("CLUSTER", "SLOTS"):
            if int(start) <= slot <= int(end):
                return int(master[1])
    finally:
        node.close()
    raise AssertionError(f"slot of {key} is not served")


def test_the_listener_hears_expiries_on_every_master(
    cluster_url: str,
    redis_cluster: RedisClusterServer,  # noqa: F811
) -> None:
    client = client_for_url(cluster_url, decode_responses=True)
    store = SessionStore(client)
    assert store.ks.tagged
    claimed: list[str] = []
    done = threading.Event()
    ids = [secrets.token_hex(8) for _ in range(24)]

    def on_expired(batch: list[str]) -> None:
        claimed.extend(batch)
        if set(ids) <= set(claimed):
            done.set()

    listener = ExpiryListener(cluster_url, on_expired)
    listener.start()
    try:
        assert listener.ready.wait(10) and listener.enabled
        for sid in ids:  # a running session with a 300 ms idle clock, nobody touching it
            assert store.adopt(sid, "mock", f"atlas-{sid}", f"pod-{sid}", {}, 300)
        masters = {_master_of(redis_cluster, store.keys(sid).alive) for sid in ids}
        assert len(masters) == 3, "the sessions' shards should cover every master"
        # Nothing else claims them (no sweep runs here); Redis expires the idle clocks
        # actively within a few hundred ms of their deadline.
        deadline = time.monotonic() + 20
        while not done.is_set() and time.monotonic() < deadline:
            for sid in ids:  # a read makes an overdue key expire (and notify) at once
                client.exists(store.keys(sid).alive)
            done.wait(0.2)
        assert sorted(set(claimed)) == sorted(ids)
        assert len(claimed) == len(ids)  # each claimed once
    finally:
        listener.stop()
        listener.join(10)
        client.close()
