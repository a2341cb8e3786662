"""``ATLAS_REDIS_URL=redis+sentinel://...``: parsing, redaction, the clients built for it,
and the Celery/redbeat transport settings derived from it (no server needed)."""

from __future__ import annotations

import asyncio

import pytest
import redis
import redis.asyncio as aioredis
from kombu.connection import Connection
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.sentinel import SentinelConnectionPool

from atlas_tasks.celery_app import build_config, create_app, get_app, transport_config
from atlas_tasks.config import AtlasSettings
from atlas_tasks.errors import ValidationError
from atlas_tasks.redis_conn import (
    SentinelURL,
    async_client_for_url,
    client_for_url,
    get_redis,
    is_sentinel_url,
    parse_sentinel_url,
    redacted_url,
    reset_redis_clients,
)

URL = "redis+sentinel://:s3cr%40t@10.0.0.1:26379,10.0.0.2:26380,[::1]:26381/mymaster/2"


def test_parse_full_url() -> None:
    spec = parse_sentinel_url(URL)
    assert spec.sentinels == (("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381))
    assert (spec.master_name, spec.db, spec.username, spec.password) == (
        "mymaster",
        2,
        None,
        "s3cr@t",
    )
    assert "s3cr" not in repr(spec)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://h:1/m", SentinelURL((("h", 1),), "m", 0)),
        ("redis+sentinel://h/m/", SentinelURL((("h", 26379),), "m", 0)),
        ("REDIS+SENTINEL://a:1,b:2/m/15", SentinelURL((("a", 1), ("b", 2)), "m", 15)),
        ("redis+sentinel://user:pw@h:1/m", SentinelURL((("h", 1),), "m", 0, "user", "pw")),
    ],
)
def test_parse_forms(url: str, expected: SentinelURL) -> None:
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("redis+sentinel://:hunter2@h:1", "no master name"),
        ("redis+sentinel://:hunter2@h:1/", "no master name"),
        ("redis+sentinel://:hunter2@h:x/m", "not a number"),
        ("redis+sentinel://:hunter2@h:70000/m", "out of range"),
        ("redis+sentinel://:hunter2@h:1,,h2:2/m", "empty sentinel address"),
        ("redis+sentinel://:hunter2@:1/m", "no host"),
        ("redis+sentinel://:hunter2@h:1/m/x", "database number"),
        ("redis+sentinel://:hunter2@h:1/m/0/extra", "too many"),
        ("redis+sentinel://:hunter2@h:1/m?db=1", "query"),
        ("redis+sentinel://user@h:1/m", "need a password"),
        ("redis+sentinel://:hunter2@[::1/m", "IPv6"),
    ],
)
def test_malformed_urls_name_the_field_not_the_secret(url: str, why: str) -> None:
    with pytest.raises(ValidationError) as info:
        parse_sentinel_url(url)
    assert info.value.field == "ATLAS_REDIS_URL"
    assert (info.value.message or "").startswith("ATLAS_REDIS_URL: ")
    assert why in str(info.value)
    assert "hunter2" not in str(info.value)


def test_get_redis_raises_the_validation_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_REDIS_URL", "redis+sentinel://:hunter2@h:1")
    reset_redis_clients()
    with pytest.raises(ValidationError, match="ATLAS_REDIS_URL: no master name"):
        get_redis()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (URL, "redis+sentinel://:***@10.0.0.1:26379,10.0.0.2:26380,[::1]:26381/mymaster/2"),
        ("redis+sentinel://u:p@h:1/m", "redis+sentinel://u:***@h:1/m"),
        ("redis+sentinel://h:1,h:2/m", "redis+sentinel://h:1,h:2/m"),
        ("sentinel://:p@a:1/0;sentinel://:p@b:2/0", "sentinel://:***@a:1/0;sentinel://:***@b:2/0"),
        ("amqp://guest:guest@localhost:5672//", "amqp://guest:***@localhost:5672//"),
        ("not a url with p@ss", "<unparsable redis url>"),
        ("redis://:pa/ss@w@rd@h:1/0", "redis://:***@h:1/0"),
    ],
)
def test_redacted_url_multi_host_forms(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_sync_client_asks_the_sentinels() -> None:
    client = client_for_url(URL, decode_responses=True, max_connections=7)
    pool = client.connection_pool
    assert isinstance(client, redis.Redis) and isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "mymaster" and pool.max_connections == 7
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cr@t"
    manager = pool.sentinel_manager
    assert [s.connection_pool.connection_kwargs["port"] for s in manager.sentinels] == [
        26379,
        26380,
        26381,
    ]
    # The sentinels get a short timeout and never the master's password.
    kwargs = manager.sentinels[0].connection_pool.connection_kwargs
    assert kwargs["socket_timeout"] == 1.0 and kwargs.get("password") is None
    assert is_sentinel_url(URL) and not is_sentinel_url("redis://h:1/0")


def test_async_client_asks_the_sentinels() -> None:
    async def build() -> aioredis.Redis:
        return async_client_for_url(URL, decode_responses=True)

    client = asyncio.run(build())
    assert isinstance(client.connection_pool, AsyncSentinelPool)
    assert client.connection_pool.service_name == "mymaster"


def test_plain_url_keeps_the_old_celery_settings() -> None:
    settings = AtlasSettings(redis_url="redis://h:6379/3", visibility_timeout_s=9)
    conf = transport_config(settings)
    assert conf["broker_url"] == conf["result_backend"] == "redis://h:6379/3"
    assert conf["redbeat_redis_url"] == "redis://h:6379/3"
    assert conf["broker_transport_options"]["visibility_timeout"] == 9
    assert "retry" in conf["redbeat_redis_options"]
    assert "result_backend_transport_options" not in conf
    assert build_config(settings)["broker_url"] == "redis://h:6379/3"


def test_sentinel_url_derives_kombu_celery_and_redbeat_settings() -> None:
    conf = transport_config(AtlasSettings(redis_url=URL))
    hosts = ["10.0.0.1:26379", "10.0.0.2:26380", "[::1]:26381"]
    expected = ";".join(f"sentinel://:s3cr%40t@{h}/2" for h in hosts)
    assert conf["broker_url"] == conf["result_backend"] == expected
    assert conf["broker_transport_options"]["master_name"] == "mymaster"
    assert conf["broker_transport_options"]["visibility_timeout"] > 0
    assert conf["result_backend_transport_options"]["master_name"] == "mymaster"
    assert conf["redbeat_redis_url"].startswith("redis-sentinel://")
    options = conf["redbeat_redis_options"]
    assert options["sentinels"] == [("10.0.0.1", 26379), ("10.0.0.2", 26380), ("::1", 26381)]
    assert (options["service_name"], options["db"], options["password"]) == (
        "mymaster",
        2,
        "s3cr@t",
    )
    # kombu reads it as its sentinel transport with every sentinel as a failover host.
    conn = Connection(conf["broker_url"], transport_options=conf["broker_transport_options"])
    assert conn.transport_cls == "sentinel" and len(conn.alt) == 3
    assert conn.password == "s3cr@t"


def test_celery_app_for_a_sentinel_url_uses_sentinel_backends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATLAS_REDIS_URL", URL)
    app = get_app()
    assert app.conf.broker_url.startswith("sentinel://")
    assert type(app.backend).__name__ == "AtlasSentinelBackend"
    assert app.backend._transport_options["master_name"] == "mymaster"
    assert "s3cr" not in app.backend.as_uri()
    assert get_app() is app  # cached for these settings, not rebuilt per call


def test_amqp_broker_gets_no_redis_transport_options() -> None:
    settings = AtlasSettings(redis_url=URL, broker_url="amqp://u:p@rabbit:5672//")
    conf = transport_config(settings)
    assert conf["broker_url"] == "amqp://u:p@rabbit:5672//"
    assert conf["broker_transport_options"] == {"confirm_publish": True}
    # Results and redbeat stay on the (Sentinel-managed) Redis.
    assert conf["result_backend"].startswith("sentinel://")
    assert conf["result_backend_transport_options"]["master_name"] == "mymaster"
    app = create_app(settings)
    assert app.conf.broker_transport_options == {"confirm_publish": True}


def test_explicit_sentinel_broker_gets_the_master_name() -> None:
    settings = AtlasSettings(redis_url=URL, broker_url="sentinel://x:1;sentinel://y:2")
    conf = transport_config(settings)
    assert conf["broker_url"] == "sentinel://x:1;sentinel://y:2"
    assert conf["broker_transport_options"]["master_name"] == "mymaster"


def test_sentinel_result_backend_does_not_subscribe_on_send() -> None:
    # Nothing listens on port 1: sending must not even try to reach the sentinels.
    backend = create_app(AtlasSettings(redis_url="redis+sentinel://127.0.0.1:1/m")).backend
    backend.on_task_call(None, "t-1")
    assert backend.result_consumer._pubsub is None
    assert not backend.result_consumer.subscribed_to


@pytest.mark.parametrize(
    "url",
    ["rediss+sentinel://:hunter2@h:1/m", "http://:hunter2@h:1/0", "redis://:hunter2@h:port/0"],
)
def test_other_malformed_urls_name_the_field(url: str) -> None:
    with pytest.raises(ValidationError) as info:
        client_for_url(url)
    assert info.value.field == "ATLAS_REDIS_URL" and "hunter2" not in str(info.value)

    async def build() -> aioredis.Redis:
        return async_client_for_url(url)

    with pytest.raises(ValidationError):
        asyncio.run(build())


def test_beat_builds_its_sentinel_client_once() -> None:
    from redbeat.schedulers import get_redis as redbeat_redis

    from atlas_tasks.beat import pin_sentinel_client

    app = create_app(AtlasSettings(redis_url=URL))
    assert redbeat_redis(app) is not redbeat_redis(app)  # redbeat alone: one per call
    pin_sentinel_client(app)
    client = redbeat_redis(app)
    assert client is redbeat_redis(app)
    assert isinstance(client.connection_pool, SentinelConnectionPool)
    assert client.connection_pool.service_name == "mymaster"
    # A plain Redis URL is left to redbeat as before.
    plain = create_app(AtlasSettings(redis_url="redis://127.0.0.1:1/0"))
    pin_sentinel_client(plain)
    assert redbeat_redis(plain) is redbeat_redis(plain)
