"""The connection layer on a real 3-master Redis Cluster (``redis+cluster://``).

What the registry and events rely on, checked against ``redis-server --cluster-enabled``
nodes formed by ``redis-cli --cluster create`` (:class:`RedisClusterServer`):

* the cluster client routes keys to all three nodes, runs registered Lua scripts whose
  keys share a ``{tag}``, and runs non-transactional pipelines across slots;
* the test cluster enforces the one-slot rule (CROSSSLOT), so a script the registry
  gets wrong fails here, not first in production;
* classic pub/sub works across nodes with a subscriber on one node, and keyspace
  notifications need a subscriber on every primary;
* a cluster that goes away surfaces as ``TransportError`` through ``redis_errors``.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from typing import Any, cast

import pytest
import redis
import redis.asyncio as aioredis
from redis.exceptions import ClusterCrossSlotError

from atlas_tasks import constants as C
from atlas_tasks.celery_app import get_app, warn_if_redis_not_persistent
from atlas_tasks.errors import TransportError
from atlas_tasks.redis_conn import (
    ClusterClientError,
    ClusterUnavailableError,
    async_client_for_url,
    async_pubsub_client_for_url,
    client_for_url,
    cluster_primary_clients,
    pubsub_client_for_url,
    redis_errors,
    wrap_redis_errors,
)
from atlas_tasks.testing.localstack import LocalCluster, RedisClusterServer
from tests.support.cluster import cluster_binaries_missing, redis_cluster  # noqa: F401
from tests.support.harness import in_ci

pytestmark = pytest.mark.integration


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _node_of(client: redis.Redis, key: str) -> int:
    """The port of the primary serving ``key``'s slot."""
    return int(cast(Any, client).get_node_from_key(key).port)


def _keys_on_distinct_nodes(client: redis.Redis, prefix: str) -> dict[int, str]:
    """One key name per node: ``{port: key}``."""
    found: dict[int, str] = {}
    for i in range(1000):
        found.setdefault(_node_of(client, f"{prefix}{i}"), f"{prefix}{i}")
        if len(found) == 3:
            return found
    raise AssertionError("keys never reached all 3 nodes")


def test_keys_land_on_all_three_nodes(redis_cluster: RedisClusterServer) -> None:
    client = client_for_url(
        redis_cluster.url,
        decode_responses=True,
        socket_keepalive=True,
        retry_on_timeout=True,
        max_connections=16,
        health_check_interval=30,  # dropped by redis-py's cluster client: no error
    )
    try:
        for i in range(200):
            assert client.set(f"spread:{i}", str(i))
        assert [client.get(f"spread:{i}") for i in range(200)] == [str(i) for i in range(200)]
        per_node = {}
        for port in redis_cluster.ports:
            node = redis_cluster.node_client(port)
            try:
                per_node[port] = len(list(node.scan_iter(match="spread:*", count=1000)))
            finally:
                node.close()
        assert sum(per_node.values()) == 200
        assert all(count > 0 for count in per_node.values()), per_node
        # Streams (the events' replay log) are single-key commands: any node's work.
        for key in _keys_on_distinct_nodes(client, "stream:").values():
            entry = client.xadd(key, {"type": "ready"}, maxlen=100, approximate=True)
            assert client.xread({key: "0"}, block=100) == [[key, [(entry, {"type": "ready"})]]]
    finally:
        client.close()


def test_registered_script_on_tagged_keys(redis_cluster: RedisClusterServer) -> None:
    client = client_for_url(redis_cluster.url, decode_responses=True)
    script = client.register_script(
        "redis.call('SET', KEYS[1], ARGV[1]); "
        "return redis.call('INCRBY', KEYS[2], tonumber(ARGV[1]))"
    )
    try:
        # One tag per node, so the script (and its NOSCRIPT reload) runs on all three.
        tags = {_node_of(client, f"{{t{i}}}"): f"{{t{i}}}" for i in range(200)}  # {port: "{tN}"}
        assert len(tags) == 3
        for tag in tags.values():
            assert script(keys=[f"script:{tag}:a", f"script:{tag}:b"], args=[5]) == 5
            assert script(keys=[f"script:{tag}:a", f"script:{tag}:b"], args=[2]) == 7
            assert client.get(f"script:{tag}:a") == "2"
        # redis-py loads a script on NOSCRIPT with SCRIPT LOAD, which it sends to
        # every primary: each node has it now.
        for port in redis_cluster.ports:
            node = redis_cluster.node_client(port)
            try:
                assert node.script_exists(script.sha) == [True]
            finally:
                node.close()
    finally:
        client.close()


def test_a_script_touching_two_slots_raises(redis_cluster: RedisClusterServer) -> None:
    client = client_for_url(redis_cluster.url, decode_responses=True)
    script = client.register_script("return redis.call('SET', KEYS[2], KEYS[1])")
    a, b = "xslot:a", "xslot:b"
    assert cast(Any, client).keyslot(a) != cast(Any, client).keyslot(b)
    try:
        # redis-py refuses before sending (its RedisClusterException, re-raised as a
        # redis.RedisError by the atlas cluster client).
        with pytest.raises(ClusterClientError, match="same key slot"):
            script(keys=[a, b])
        # The server refuses too: sent straight to the node serving `a`, the two-slot
        # EVAL is a CROSSSLOT error, wherever `b` lives (redis-py raises the CROSSSLOT
        # reply as ClusterCrossSlotError, without the code in the message).
        node = redis_cluster.node_client(_node_of(client, a), decode_responses=True)
        try:
            with pytest.raises(ClusterCrossSlotError, match="don't hash to the same slot"):
                node.eval("return redis.call('SET', KEYS[2], KEYS[1])", 2, a, b)
        finally:
            node.close()
        assert client.exists(a, b) == 0  # (a multi-key EXISTS is split per slot)
    finally:
        client.close()


def test_undeclared_keys_of_another_slot(redis_cluster: RedisClusterServer) -> None:
    """A key a script builds itself (from an ARGV prefix) is not checked by redis-py.

    Redis 7.0 refuses it when its slot is on another node, and, for a script declared
    with a ``#!lua`` shebang, whenever its slot differs from the declared keys'; a script
    without a shebang may touch another slot *of the same node* (it works until a
    resharding moves one of the slots away). Registry scripts must keep every key in
    one slot; a ``#!lua`` first line makes this cluster catch a slip at once.
    """
    client = client_for_url(redis_cluster.url, decode_responses=True)
    declared = "undeclared:{home}:k"
    home = _node_of(client, declared)
    slot = cast(Any, client).keyslot(declared)
    same_node = other_node = None
    for i in range(2000):
        key = f"undeclared:other:{i}"
        if cast(Any, client).keyslot(key) == slot:
            continue
        if _node_of(client, key) == home:
            same_node = same_node or key
        else:
            other_node = other_node or key
    assert same_node and other_node
    body = "redis.call('SET', KEYS[1], 1); return redis.call('SET', ARGV[1], 1)"
    legacy = client.register_script(body)
    strict = client.register_script("#!lua\n" + body)
    try:
        with pytest.raises(redis.ResponseError, match="non local key"):
            legacy(keys=[declared], args=[other_node])
        assert legacy(keys=[declared], args=[same_node]) == "OK"  # the hazard
        with pytest.raises(redis.ResponseError, match="same slot"):
            strict(keys=[declared], args=[same_node])
        with pytest.raises(redis.ResponseError):
            strict(keys=[declared], args=[other_node])
    finally:
        client.close()


def test_non_transactional_pipeline_across_slots(redis_cluster: RedisClusterServer) -> None:
    client = client_for_url(redis_cluster.url, decode_responses=True)
    keys = list(_keys_on_distinct_nodes(client, "pipe:").values()) + [
        f"pipe:more:{i}" for i in range(30)
    ]
    try:
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.set(key, key, px=60_000)
                pipe.pttl(key)
            results = pipe.execute()
        assert results[0::2] == [True] * len(keys)
        assert all(0 < ttl <= 60_000 for ttl in results[1::2])
        with client.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.get(key)
            assert pipe.execute() == keys
        # A MULTI/EXEC pipeline works within one slot, and is refused across slots. Its
        # replies are raw: redis-py 8.1's cluster transactions skip the response
        # callbacks ("OK" where one Redis's pipeline gives True).
        with client.pipeline(transaction=True) as pipe:
            pipe.set("tx:{one}:a", "1")
            pipe.incr("tx:{one}:b")
            assert pipe.execute() == ["OK", 1]
        with pytest.raises(ClusterClientError, match="same slot"):
            with client.pipeline(transaction=True) as pipe:
                pipe.set(keys[0], "1")
                pipe.set(keys[1], "1")
                pipe.execute()
    finally:
        client.close()


def _messages(pubsub: Any, count: int, timeout: float = 10.0) -> list[str]:
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        message = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            got.append(message["data"])
    return got


def _subscribed(pubsub: Any) -> bool:
    """Whether the next message is a subscribe confirmation (the subscription is live)."""
    message = pubsub.get_message(timeout=0.2)
    return message is not None and message["type"] == "subscribe"


def test_pubsub_one_node_subscriber_sees_every_node(redis_cluster: RedisClusterServer) -> None:
    subscriber = pubsub_client_for_url(redis_cluster.url, decode_responses=True)
    client = client_for_url(redis_cluster.url, decode_responses=True)
    pubsub = subscriber.pubsub()
    try:
        pubsub.subscribe("atlas:test:events")
        # The subscription is in place once its confirmation arrived.
        _wait(lambda: _subscribed(pubsub), 10, "the subscribe confirmation")
        assert client.publish("atlas:test:events", "via-cluster-client") >= 0
        # PUBLISH on any node reaches the subscriber's node (the cluster bus forwards it).
        for port in redis_cluster.ports:
            node = redis_cluster.node_client(port)
            try:
                node.publish("atlas:test:events", f"via-node-{port}")
            finally:
                node.close()
        # So does a PUBLISH from a Lua script (how the events module emits), run on
        # whichever node holds the script's key.
        emit = client.register_script("return redis.call('PUBLISH', ARGV[1], KEYS[1])")
        by_node = _keys_on_distinct_nodes(client, "emit:")
        for key in by_node.values():
            emit(keys=[key], args=["atlas:test:events"])
        got = _messages(pubsub, 7)
        assert sorted(got) == sorted(
            [
                "via-cluster-client",
                *(f"via-node-{p}" for p in redis_cluster.ports),
                *by_node.values(),
            ]
        )
    finally:
        pubsub.close()
        subscriber.close()
        client.close()


def test_async_cluster_client_and_async_pubsub(redis_cluster: RedisClusterServer) -> None:
    async def run() -> None:
        client = async_client_for_url(
            redis_cluster.url,
            decode_responses=True,
            max_connections=8,
            retry_on_timeout=True,  # not a keyword of redis-py's asyncio cluster client
            socket_keepalive=True,
        )
        subscriber = await async_pubsub_client_for_url(redis_cluster.url, decode_responses=True)
        assert type(subscriber) is aioredis.Redis  # a plain client on one node
        pubsub = subscriber.pubsub()
        try:
            for i in range(60):
                await client.set(f"async:{i}", i)
            assert await client.get("async:59") == "59"
            script = client.register_script("return redis.call('INCR', KEYS[1])")
            assert await script(keys=["async:{tag}:n"]) == 1
            pipe = client.pipeline(transaction=False)
            for i in range(60):
                pipe.get(f"async:{i}")
            assert await pipe.execute() == [str(i) for i in range(60)]
            with pytest.raises(ClusterClientError):
                await client.register_script("return 1")(keys=["async:a", "async:b"])

            await pubsub.subscribe("atlas:test:async")
            deadline = time.monotonic() + 10
            confirmed = False
            while not confirmed and time.monotonic() < deadline:
                message = await pubsub.get_message(timeout=0.2)
                confirmed = message is not None and message["type"] == "subscribe"
            assert confirmed
            await client.publish("atlas:test:async", "hello")
            received = None
            while received is None and time.monotonic() < deadline:
                received = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
            assert received is not None and received["data"] == "hello"
        finally:
            await pubsub.aclose()
            await subscriber.aclose()
            await client.aclose()

    asyncio.run(run())


def test_keyspace_notifications_need_every_primary(redis_cluster: RedisClusterServer) -> None:
    primaries = cluster_primary_clients(redis_cluster.url, decode_responses=True)
    assert sorted(c.connection_pool.connection_kwargs["port"] for c in primaries) == sorted(
        redis_cluster.ports
    )
    client = client_for_url(redis_cluster.url, decode_responses=True)
    subscriptions = []
    try:
        for primary in primaries:
            assert primary.info("replication")["role"] == "master"
            pubsub = primary.pubsub()
            pubsub.subscribe("__keyevent@0__:expired")
            subscriptions.append(pubsub)
        for pubsub in subscriptions:
            _wait(functools.partial(_subscribed, pubsub), 10, "the subscribe confirmation")
        by_node = _keys_on_distinct_nodes(client, "expiring:")
        for key in by_node.values():
            client.set(key, "1", px=50)
        # Each node announces only its own keys' expiry.
        for primary, pubsub in zip(primaries, subscriptions, strict=True):
            port = primary.connection_pool.connection_kwargs["port"]
            assert _messages(pubsub, 1) == [by_node[port]]
    finally:
        for pubsub in subscriptions:
            pubsub.close()
        for primary in primaries:
            primary.close()
        client.close()


def test_a_cluster_that_goes_away_is_a_transport_error() -> None:
    """Its own password-protected cluster: it is stopped under a connected client."""
    missing = cluster_binaries_missing()
    if missing is not None:
        if in_ci():
            pytest.fail(f"{missing} is required in CI (.ci/run installs redis-server)")
        pytest.skip(f"{missing} not installed")
    password = "cl-s3cret/pw"
    cluster = RedisClusterServer(password=password).start()
    try:
        client = client_for_url(cluster.url, decode_responses=True, socket_connect_timeout=1)
        assert client.set("gone:a", "1") and client.get("gone:a") == "1"

        async def async_client_works() -> aioredis.Redis:
            aclient = async_client_for_url(cluster.url, decode_responses=True)
            assert await aclient.get("gone:a") == "1"
            return aclient

        loop = asyncio.new_event_loop()
        aclient = loop.run_until_complete(async_client_works())
        cluster.stop()

        with pytest.raises(TransportError) as info:
            with redis_errors("touch", cluster.url):
                client.get("gone:a")
        assert isinstance(info.value.raw, redis.ConnectionError)
        assert password not in str(info.value) and "s3cret" not in str(info.value)
        assert "redis+cluster://:***@127.0.0.1:" in str(info.value)

        @wrap_redis_errors("atouch")
        async def atouch() -> Any:
            return await aclient.get("gone:a")

        with pytest.raises(TransportError):
            loop.run_until_complete(atouch())
        loop.run_until_complete(aclient.aclose())
        loop.close()

        # Builders: no node answers any more.
        with pytest.raises(ClusterUnavailableError):
            pubsub_client_for_url(cluster.url)
        with pytest.raises(ClusterUnavailableError):
            client_for_url(cluster.url, socket_connect_timeout=1)
    finally:
        cluster.cleanup()


def test_celery_next_to_a_cluster() -> None:
    """Registry on a cluster, Celery on a plain Redis: the worker and beat start, beat's
    lock and schedule and the task results live on the plain Redis, none on the cluster."""
    missing = cluster_binaries_missing()
    if missing is not None:
        if in_ci():
            pytest.fail(f"{missing} is required in CI (.ci/run installs redis-server)")
        pytest.skip(f"{missing} not installed")
    with LocalCluster(redis_cluster=True, reap_interval_ms=500) as local:
        assert local.redis is not None and local.redis_cluster is not None
        assert local.env["ATLAS_REDIS_URL"].startswith("redis+cluster://")
        app = get_app()
        assert app.conf.broker_url == app.conf.result_backend == local.redis.url
        assert app.conf.redbeat_redis_url == local.redis.url
        # A round trip through the broker and the result backend (a Celery built-in).
        assert app.send_task("celery.accumulate", args=(1, 2)).get(timeout=30) == [1, 2]
        plain = redis.Redis.from_url(local.redis.url, decode_responses=True)
        cluster_client = client_for_url(local.redis_url, decode_responses=True)
        try:
            assert plain.exists(f"{C.DEFAULT_NAMESPACE}:redbeat::lock")
            assert list(plain.scan_iter(match="celery-task-meta-*"))
            on_cluster = sorted(cluster_client.scan_iter(match="*", count=1000))
            assert not [k for k in on_cluster if "redbeat" in k or "celery" in k or "kombu" in k]
        finally:
            plain.close()
            cluster_client.close()


def test_persistence_check_asks_every_primary(redis_cluster: RedisClusterServer) -> None:
    # The test cluster runs without AOF or RDB: the worker's start-up check says so, and
    # names the node (a cluster client's CONFIG GET would ask one node only).
    problem = warn_if_redis_not_persistent(redis_cluster.url)
    assert problem is not None and problem.startswith("cluster node 127.0.0.1:")
    assert "no persistence" in problem
    for port in redis_cluster.ports:
        node = redis_cluster.node_client(port)
        try:
            node.config_set("appendonly", "yes")
        finally:
            node.close()
    try:
        assert warn_if_redis_not_persistent(redis_cluster.url) is None
    finally:
        for port in redis_cluster.ports:
            node = redis_cluster.node_client(port)
            try:
                node.config_set("appendonly", "no")
            finally:
                node.close()
