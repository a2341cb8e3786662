"""With Redis down (or reloading its AOF), every caller-facing call raises
``TransportError`` naming Redis and its URL without the password, never a raw
``redis.exceptions`` error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from atlas_tasks import events, orchestrator
from atlas_tasks.client import Session
from atlas_tasks.config import reset_settings
from atlas_tasks.errors import TransportError
from atlas_tasks.redis_conn import redacted_url, redis_errors, reset_redis_clients
from atlas_tasks.sealing import generate_key
from atlas_tasks.testing.localstack import RedisServer, free_port
from tests.support.harness import in_ci, redis_available

PASSWORD = "s3cr3t-pw"


@pytest.fixture
def dead_redis(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """ATLAS_REDIS_URL on a closed port, with a password that must never be shown."""
    url = f"redis://:{PASSWORD}@127.0.0.1:{free_port()}/0"
    monkeypatch.setenv("ATLAS_REDIS_URL", url)
    monkeypatch.setenv("ATLAS_SECRET_KEY", generate_key())
    reset_settings()
    reset_redis_clients()
    yield url
    reset_redis_clients()


async def _first_async_event() -> None:
    async for _ in events.asubscribe("abc", timeout=1):
        break


CALLS: list[tuple[str, Callable[[], Any]]] = [
    ("spawn", lambda: orchestrator.spawn(provider="mock", image="img", idle_ttl_ms=60_000)),
    ("touch", lambda: orchestrator.touch("abc")),
    ("info", lambda: orchestrator.info("abc")),
    ("list_ids", orchestrator.list_ids),
    ("stop_tracked", lambda: orchestrator.stop_tracked("abc")),
    ("events.subscribe", lambda: next(iter(events.subscribe("abc", timeout=1)))),
    ("events.history", lambda: events.history("abc")),
    ("events.asubscribe", lambda: asyncio.run(_first_async_event())),
    ("wait", lambda: Session("abc", "mock", "atlas-abc", "none").wait(timeout=1)),
]


@pytest.mark.parametrize(("what", "call"), CALLS, ids=[c[0] for c in CALLS])
def test_redis_down_is_a_transport_error(
    dead_redis: str, what: str, call: Callable[[], Any]
) -> None:
    with pytest.raises(TransportError) as info:
        call()
    err = info.value
    assert err.kind == "transport"
    assert "Redis" in str(err)
    assert PASSWORD not in str(err) and PASSWORD not in repr(err)
    assert dead_redis.rsplit("@", 1)[1] in str(err)  # host:port/db, password removed
    assert (what if what != "wait" else "events.subscribe") in str(err)


def test_busy_loading_says_redis_is_restarting() -> None:
    with pytest.raises(TransportError, match="loading its dataset") as info:
        with redis_errors("touch", "redis://:pw@db:6379/0"):
            raise redis.BusyLoadingError("Redis is loading the dataset in memory")
    assert "redis://:***@db:6379/0" in str(info.value)
    assert isinstance(info.value.raw, redis.BusyLoadingError)


def test_busy_loading_from_touch_is_a_transport_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def loading(*_: Any, **__: Any) -> Any:
        raise redis.BusyLoadingError("Redis is loading the dataset in memory")

    monkeypatch.setattr(redis.Redis, "evalsha", loading)
    monkeypatch.setattr(redis.Redis, "execute_command", loading)
    with pytest.raises(TransportError, match="loading"):
        orchestrator.touch("abc")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://user:pw@host/1", "redis://user:***@host/1"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("rediss://:p%40ss@h:1/0", "rediss://:***@h:1/0"),
    ],
)
def test_redacted_url(url: str, shown: str) -> None:
    assert redacted_url(url) == shown


def test_a_redis_that_stops_mid_session_is_a_transport_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    server = RedisServer().start()
    try:
        monkeypatch.setenv("ATLAS_REDIS_URL", server.url)
        reset_settings()
        reset_redis_clients()
        assert orchestrator.list_ids() == []  # connected once: the pool holds a connection
        server.stop()
        for call in (
            orchestrator.list_ids,
            lambda: orchestrator.touch("abc"),
            lambda: orchestrator.info("abc"),
        ):
            with pytest.raises(TransportError, match="Redis"):
                call()
    finally:
        server.cleanup()
        reset_redis_clients()
