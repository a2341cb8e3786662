"""``ATLAS_REDIS_URL=redis+cluster://...``: parsing, redaction, validation errors, the
error translation of the cluster clients, and the Celery settings a cluster requires
(no server needed; tests/integration/test_cluster_connection.py uses a real cluster)."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import (
    CrossSlotTransactionError,
    RedisClusterException,
    SlotNotCoveredError,
)

from atlas_tasks.celery_app import (
    CLUSTER_COMBINATION,
    build_config,
    check_celery_urls,
    transport_config,
)
from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import TransportError, ValidationError
from atlas_tasks.redis_conn import (
    REDIS_ERRORS,
    ClusterClientError,
    ClusterUnavailableError,
    ClusterURL,
    async_client_for_url,
    async_pubsub_client_for_url,
    client_for_url,
    cluster_primary_clients,
    is_cluster_url,
    parse_cluster_url,
    pubsub_client_for_url,
    redacted_url,
    redis_errors,
    wrap_redis_errors,
)

URL = "redis+cluster://:s3cr%40t@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002"
#: Nothing listens on port 1 of loopback: connecting fails at once.
DEAD = "redis+cluster://:hunter2@127.0.0.1:1"
SENTINEL = "redis+sentinel://:pw@s1:26379,s2:26379/mymaster/1"


# ---------------------------------------------------------------- parsing
def test_parse_full_url() -> None:
    spec = parse_cluster_url(URL)
    assert spec.nodes == (("10.0.0.1", 7000), ("10.0.0.2", 7001), ("::1", 7002))
    assert (spec.username, spec.password) == (None, "s3cr@t")
    assert spec.connection_kwargs() == {"password": "s3cr@t"}
    assert "s3cr" not in repr(spec)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+cluster://h:1", ClusterURL((("h", 1),))),
        ("redis+cluster://h", ClusterURL((("h", 6379),))),
        ("redis+cluster://h:1/", ClusterURL((("h", 1),))),
        ("redis+cluster://h:1/0", ClusterURL((("h", 1),))),
        ("REDIS+CLUSTER://a:1, b:2", ClusterURL((("a", 1), ("b", 2)))),
        ("redis+cluster://user:pw@h:1", ClusterURL((("h", 1),), "user", "pw")),
        ("redis+cluster://:pw@h:1", ClusterURL((("h", 1),), None, "pw")),
    ],
)
def test_parse_forms(url: str, expected: ClusterURL) -> None:
    assert parse_cluster_url(url) == expected
    assert is_cluster_url(url)


@pytest.mark.parametrize(
    "url", ["redis://h:1/0", "redis+sentinel://h:1/m", "rediss://h", "", None, "cluster"]
)
def test_other_urls_are_not_cluster_urls(url: str | None) -> None:
    assert not is_cluster_url(url)


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+cluster://:hunter2@", "empty node address"),
        ("redis+cluster://:hunter2@:7000", "no host"),
        ("redis+cluster://:hunter2@h:x", "not a number"),
        ("redis+cluster://:hunter2@h:0", "out of range"),
        ("redis+cluster://:hunter2@h:65536", "out of range"),
        ("redis+cluster://:hunter2@h:1,,h2:2", "empty node address"),
        ("redis+cluster://:hunter2@h:1/1", "only database 0"),
        ("redis+cluster://:hunter2@h:1/x", "database number"),
        ("redis+cluster://:hunter2@h:1/0/0", "too many"),
        ("redis+cluster://:hunter2@h:1?db=0", "query"),
        ("redis+cluster://user@h:1", "need a password"),
        ("redis+cluster://:hunter2@[::1:1", "IPv6"),
        ("redis://:hunter2@h:1", "not a redis+cluster:// URL"),
    ],
)
def test_malformed_urls_name_the_field_not_the_secret(url: str, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_cluster_url(url)
    assert info.value.field == "ATLAS_REDIS_URL"
    message = info.value.message or ""
    assert message.startswith("ATLAS_REDIS_URL: ")
    assert why in message
    assert "redis+cluster://[[user]:password@]host:port" in message  # the expected form
    assert "hunter2" not in message


def test_client_builders_raise_the_validation_error() -> None:
    bad = "redis+cluster://:hunter2@h:1/3"
    for build in (client_for_url, pubsub_client_for_url, cluster_primary_clients):
        with pytest.raises(ValidationError, match="only database 0") as info:
            build(bad)
        assert info.value.field == "ATLAS_REDIS_URL" and "hunter2" not in str(info.value)

    async def build_async() -> None:
        with pytest.raises(ValidationError, match="only database 0"):
            async_client_for_url(bad)
        with pytest.raises(ValidationError, match="only database 0"):
            await async_pubsub_client_for_url(bad)

    asyncio.run(build_async())


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (URL, "redis+cluster://:***@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002"),
        ("redis+cluster://u:p@a:1,b:2", "redis+cluster://u:***@a:1,b:2"),
        ("redis+cluster://a:1,b:2", "redis+cluster://a:1,b:2"),
        ("redis+cluster://:pa/ss@w@rd@a:1,b:2", "redis+cluster://:***@a:1,b:2"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


# ---------------------------------------------------------------- cluster errors
def test_an_unreachable_cluster_is_a_redis_connection_error() -> None:
    # The sync client reads the slot map when built: no node answers.
    with pytest.raises(ClusterUnavailableError) as info:
        client_for_url(DEAD, socket_connect_timeout=0.5)
    assert isinstance(info.value, redis.ConnectionError)  # retry loops catch it
    assert isinstance(info.value.__cause__, RedisClusterException)
    with pytest.raises(ClusterUnavailableError):
        pubsub_client_for_url(DEAD)
    with pytest.raises(ClusterUnavailableError):
        cluster_primary_clients(DEAD)


def test_an_unreachable_cluster_fails_the_async_client_on_first_use() -> None:
    async def use() -> None:
        client = async_client_for_url(DEAD, decode_responses=True, retry_on_timeout=True)
        try:
            with pytest.raises(ClusterUnavailableError):
                await client.get("k")
        finally:
            await client.aclose()
        with pytest.raises(ClusterUnavailableError):
            await async_pubsub_client_for_url(DEAD)

    asyncio.run(use())


def test_redis_errors_wraps_redis_py_cluster_exceptions() -> None:
    # RedisClusterException is not a redis.RedisError; redis_errors covers it anyway.
    assert not issubclass(RedisClusterException, redis.RedisError)
    assert RedisClusterException in REDIS_ERRORS
    for raw in (
        RedisClusterException("Redis Cluster cannot be connected"),
        SlotNotCoveredError("slot 7 is not covered"),
        CrossSlotTransactionError("keys in two slots"),
        ClusterUnavailableError("down"),
        ClusterClientError("cross slot"),
    ):
        with pytest.raises(TransportError) as info:
            with redis_errors("touch", DEAD):
                raise raw
        assert info.value.raw is raw
        assert "redis+cluster://:***@127.0.0.1:1" in str(info.value)
        assert "hunter2" not in str(info.value)


def test_wrap_redis_errors_wraps_redis_py_cluster_exceptions() -> None:
    @wrap_redis_errors("touch")
    def call() -> None:
        raise SlotNotCoveredError("slot 7 is not covered")

    @wrap_redis_errors("atouch")
    async def acall() -> None:
        raise RedisClusterException("Redis Cluster cannot be connected")

    with pytest.raises(TransportError, match="SlotNotCoveredError"):
        call()
    with pytest.raises(TransportError, match="RedisClusterException"):
        asyncio.run(acall())


# ---------------------------------------------------------------- Celery settings
def _cluster(**kwargs: str) -> AtlasSettings:
    return AtlasSettings.model_validate(
        {"redis_url": "redis+cluster://:pw@c1:7000,c2:7001", **kwargs}
    )


def test_cluster_needs_a_broker_url() -> None:
    with pytest.raises(ValidationError) as info:
        transport_config(_cluster(result_backend="redis://r:6379/0"))
    assert info.value.field == "ATLAS_BROKER_URL"
    assert "required" in str(info.value)
    assert CLUSTER_COMBINATION in str(info.value)
    assert CLUSTER_COMBINATION == (
        "registry and events on Redis Cluster; broker on RabbitMQ/Redis/Sentinel; "
        "results and redbeat on Redis/Sentinel"
    )


def test_cluster_needs_a_result_backend() -> None:
    with pytest.raises(ValidationError) as info:
        build_config(_cluster(broker_url="amqp://u:p@rabbit:5672//"))
    assert info.value.field == "ATLAS_RESULT_BACKEND"
    assert "required" in str(info.value) and CLUSTER_COMBINATION in str(info.value)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        # With the registry on a cluster...
        (
            {"broker_url": "redis+cluster://:hunter2@c1:7000", "result_backend": "redis://r"},
            "ATLAS_BROKER_URL",
        ),
        (
            {"broker_url": "amqp://r", "result_backend": "redis+cluster://:hunter2@c1:7000"},
            "ATLAS_RESULT_BACKEND",
        ),
        ({"broker_url": "sqs://", "result_backend": "redis://r"}, "ATLAS_BROKER_URL"),
        (
            {"broker_url": "amqp://r", "result_backend": "rpc://:hunter2@r"},
            "ATLAS_RESULT_BACKEND",
        ),
        (
            {"broker_url": "amqp://r", "result_backend": "sentinel://:hunter2@s:26379"},
            "ATLAS_RESULT_BACKEND",
        ),
        (
            {"broker_url": "sentinel://:hunter2@s:26379", "result_backend": "redis://r"},
            "ATLAS_BROKER_URL",
        ),
    ],
)
def test_cluster_rejects_brokers_and_backends_celery_cannot_use(
    settings: dict[str, str], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        check_celery_urls(_cluster(**settings))
    assert info.value.field == field
    assert (info.value.message or "").startswith(f"{field}: ")
    assert CLUSTER_COMBINATION in str(info.value)
    assert "hunter2" not in str(info.value)


def test_kombu_sentinel_form_gets_a_hint() -> None:
    with pytest.raises(ValidationError, match="redis\\+sentinel://host:port"):
        check_celery_urls(_cluster(broker_url="amqp://r", result_backend="sentinel://s:26379/0"))


@pytest.mark.parametrize("field", ["broker_url", "result_backend"])
def test_a_cluster_is_never_a_celery_url_even_next_to_one_redis(field: str) -> None:
    settings = AtlasSettings.model_validate(
        {"redis_url": "redis://r:6379/0", field: "redis+cluster://c:7000"}
    )
    with pytest.raises(ValidationError, match="no Redis Cluster transport") as info:
        transport_config(settings)
    assert info.value.field == f"ATLAS_{field.upper()}"


def test_cluster_with_rabbitmq_and_redis_results() -> None:
    conf = transport_config(
        _cluster(broker_url="amqp://u:p@rabbit:5672//", result_backend="redis://:rp@r:6379/2")
    )
    assert conf["broker_url"] == "amqp://u:p@rabbit:5672//"
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    assert conf["result_backend"] == "redis://:rp@r:6379/2"
    # redbeat's lock and schedule live on the result backend's Redis, never the cluster.
    assert conf["redbeat_redis_url"] == "redis://:rp@r:6379/2"
    assert "retry" in conf["redbeat_redis_options"]
    assert "result_backend_transport_options" not in conf


def test_cluster_with_redis_broker_and_sentinel_results() -> None:
    conf = transport_config(_cluster(broker_url="redis://b:6379/0", result_backend=SENTINEL))
    assert conf["broker_url"] == "redis://b:6379/0"
    assert conf["broker_transport_options"]["visibility_timeout"] > 0
    assert conf["result_backend"] == "sentinel://:pw@s1:26379/1;sentinel://:pw@s2:26379/1"
    assert conf["result_backend_transport_options"]["master_name"] == "mymaster"
    assert conf["redbeat_redis_url"] == "redis-sentinel://s1:26379/1"
    options = conf["redbeat_redis_options"]
    assert (options["service_name"], options["db"], options["password"]) == ("mymaster", 1, "pw")
    assert options["sentinels"] == [("s1", 26379), ("s2", 26379)]


def test_cluster_with_sentinel_broker_and_results() -> None:
    conf = transport_config(_cluster(broker_url=SENTINEL, result_backend=SENTINEL))
    assert conf["broker_url"].startswith("sentinel://:pw@s1:26379/1;")
    assert conf["broker_transport_options"]["master_name"] == "mymaster"
    assert conf["broker_transport_options"]["visibility_timeout"] > 0
    assert conf["redbeat_redis_url"].startswith("redis-sentinel://")


def test_a_malformed_sentinel_broker_names_its_field() -> None:
    with pytest.raises(ValidationError) as info:
        transport_config(
            _cluster(broker_url="redis+sentinel://:hunter2@s:1", result_backend="redis://r")
        )
    assert info.value.field == "ATLAS_BROKER_URL"
    assert (info.value.message or "").startswith("ATLAS_BROKER_URL: no master name")
    assert "hunter2" not in str(info.value)


def test_one_redis_with_an_explicit_sentinel_broker_url() -> None:
    # redis+sentinel:// as ATLAS_BROKER_URL is translated for kombu with its own master.
    conf = transport_config(AtlasSettings(redis_url="redis://r:6379/0", broker_url=SENTINEL))
    assert conf["broker_url"].startswith("sentinel://")
    assert conf["broker_transport_options"]["master_name"] == "mymaster"
    assert conf["result_backend"] == conf["redbeat_redis_url"] == "redis://r:6379/0"
