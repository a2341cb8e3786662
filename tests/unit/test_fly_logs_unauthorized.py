"""``fly.subscribe_logs`` with no usable Fly token fails loudly, naming the token chain,
instead of yielding nothing forever (real redis-server, fake fetcher, no Celery)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import AtlasError, UnauthorizedError
from atlas_tasks.fly import client as fly_client
from atlas_tasks.fly import service, store
from atlas_tasks.fly.logs import LogPage
from atlas_tasks.redis_conn import reset_redis_clients

APP = "web"


@pytest.fixture
def settings(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[AtlasSettings]:
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    reset_settings()
    reset_redis_clients()
    yield AtlasSettings(redis_url=redis_url, fly_logs_poll_interval_s=0.05, fly_logs_lease_s=2)
    reset_redis_clients()


@pytest.fixture
def deps(settings: AtlasSettings, redis_client: redis.Redis) -> Dependencies:
    return Dependencies.from_client(redis_client, settings=settings)


def now_ms() -> int:
    return int(time.time() * 1000)


def no_token(app: str, cursor: str | None) -> LogPage:
    # What LogsClient.fetch raises when the token chain comes up empty.
    raise UnauthorizedError(f"no_token_available: no Fly token for app {app!r}", provider="fly")


def test_subscriber_gets_an_unauthorized_error_naming_the_chain(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    stop = threading.Event()

    def streamer(app: str) -> None:
        def loop() -> None:
            assert service.streamer_lease(deps, app, "t1").acquire()
            while not stop.is_set():
                result = service.run_slice(
                    deps, app, "t1", fetch=no_token, slice_s=0.2, had_subscriber=True
                )
                if result.outcome != "continue":
                    return

        threading.Thread(target=loop, daemon=True).start()

    started = time.monotonic()
    try:
        with pytest.raises(AtlasError) as caught:
            for _ in fly_client.subscribe(APP, streamer, timeout=10, settings=settings):
                pass
    finally:
        stop.set()
    assert time.monotonic() - started < 8, "must fail fast, not at the idle timeout"
    assert caught.value.kind == "unauthorized" and caught.value.provider == "fly"
    message = str(caught.value)
    assert "FLY_API_TOKEN" in message and "config.yml" in message and APP in message
    assert store.live_subscribers(redis_client, APP, now_ms()) == 0  # unsubscribed on the way out


def test_other_poll_errors_do_not_end_the_subscription(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    # A transient failure is retried by the streamer; the subscriber keeps waiting.
    assert service.streamer_lease(deps, APP, "t2").acquire()
    redis_client.zadd(store.subscribers_key(APP), {"s": int(time.time() * 1000) + 30_000})

    def flaky(app: str, cursor: str | None) -> LogPage:
        raise AtlasError("HTTP 503", kind="provider", provider="fly", status=503)

    result = service.run_slice(deps, APP, "t2", fetch=flaky, slice_s=0.1)
    assert result.errors >= 1 and result.outcome == "continue"
    from atlas_tasks import events

    assert not [e for e in events.history(APP, topic="logs") if e.type == "error"]
