"""The logs streamer's Redis protocol (real redis-server, fake fetcher, no Celery)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import TransportError
from atlas_tasks.fly import client as fly_client
from atlas_tasks.fly import service, store
from atlas_tasks.fly.logs import LogEntry, LogPage
from atlas_tasks.redis_conn import reset_redis_clients

APP = "web"


class FakeLogs:
    """An append-only log with Fly's next_token paging (token = index of the last entry)."""

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.calls: list[str | None] = []
        self.fail_next = 0
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            start = len(self.entries)
            self.entries += [
                LogEntry(id=str(i), timestamp=f"t{i}", message=f"line {i}")
                for i in range(start + 1, start + n + 1)
            ]

    def __call__(self, app: str, token: str | None) -> LogPage:
        with self.lock:
            self.calls.append(token)
            if self.fail_next:
                self.fail_next -= 1
                raise TransportError("connection refused", provider="fly")
            after = int(token) if token else max(0, len(self.entries) - C.FLY_LOGS_PAGE_SIZE)
            chosen = self.entries[after : after + C.FLY_LOGS_PAGE_SIZE]
            nxt = str(after + len(chosen)) if (chosen or token) else None
            return LogPage(entries=chosen, next_token=nxt)


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


def subscribe_raw(r: redis.Redis, sub: str = "s1", ttl_ms: int = 30_000) -> None:
    r.zadd(store.subscribers_key(APP), {sub: int(time.time() * 1000) + ttl_ms})


def published(app: str = APP) -> list[str]:
    return [
        e["message"]
        for ev in events.history(app, topic="logs")
        if ev.type == "logs"
        for e in ev.data["entries"]
    ]


def test_advances_silently_without_subscribers(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    logs = FakeLogs()
    logs.add(5)
    assert service.streamer_lease(deps, APP, "o1").acquire()
    result = service.run_slice(deps, APP, "o1", fetch=logs, slice_s=0.2)
    assert result.outcome == "continue" and result.skipped == 5 and result.published == 0
    assert redis_client.get(store.cursor_key(APP)) == "5"
    assert published() == []
    # the first subscriber gets only what arrives after it joined
    subscribe_raw(redis_client)
    logs.add(2)
    result = service.run_slice(deps, APP, "o1", fetch=logs, slice_s=0.2)
    assert published() == ["line 6", "line 7"] and result.had_subscriber
    assert 0 < redis_client.pttl(store.cursor_key(APP)) <= C.FLY_LOGS_CURSOR_TTL_MS


def test_restart_resumes_from_the_cursor_without_repeats(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    logs = FakeLogs()
    subscribe_raw(redis_client)
    service.streamer_lease(deps, APP, "o1").acquire()
    logs.add(3)
    service.run_slice(deps, APP, "o1", fetch=logs, slice_s=0.1)
    # the streamer dies without releasing; its lease expires; a new one takes over
    redis_client.delete(store.lock_key(APP))
    logs.add(2)
    assert service.streamer_lease(deps, APP, "o2").acquire()
    service.run_slice(deps, APP, "o2", fetch=logs, slice_s=0.1)
    assert published() == [f"line {i}" for i in range(1, 6)]


def test_a_zombie_streamer_can_write_nothing(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    subscribe_raw(redis_client)
    redis_client.set(store.lock_key(APP), "someone-else")
    redis_client.set(store.cursor_key(APP), "7")
    entry = LogEntry(timestamp="t", message="late")
    assert store.commit(
        redis_client,
        APP,
        "zombie",
        lease_ms=2000,
        entries=[entry.model_dump(mode="json")],
        next_cursor="8",
        now_ms=now_ms(),
    ) == (-1, None)
    assert redis_client.get(store.cursor_key(APP)) == "7" and published() == []
    result = service.run_slice(deps, APP, "zombie", fetch=FakeLogs(), slice_s=0.1)
    assert result.outcome == "lost_lock" and result.polls == 0
    assert not store.stop(redis_client, APP, "zombie", "x")
    assert redis_client.get(store.lock_key(APP)) == "someone-else"


def test_stops_when_the_last_subscriber_leaves(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    logs = FakeLogs()
    logs.add(1)
    service.streamer_lease(deps, APP, "o1").acquire()
    subscribe_raw(redis_client, ttl_ms=300)  # expires during the slice
    result = service.run_slice(deps, APP, "o1", fetch=logs, slice_s=5)
    assert result.outcome == "stopped" and result.had_subscriber
    assert redis_client.get(store.lock_key(APP)) is None
    assert redis_client.get(store.cursor_key(APP)) is None
    last = events.history(APP, topic="logs")[-1]
    assert (last.type, last.data) == ("stopped", {"reason": "no_subscribers"})


def test_a_streamer_nobody_subscribes_to_stops_after_the_idle_limit(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    service.streamer_lease(deps, APP, "o1").acquire()
    long_ago = int(time.time() * 1000) - C.FLY_LOGS_IDLE_STOP_MS - 1
    result = service.run_slice(
        deps, APP, "o1", fetch=FakeLogs(), alone_since_ms=long_ago, slice_s=5
    )
    assert result.outcome == "stopped" and not result.had_subscriber


def test_fetch_errors_keep_the_cursor_and_the_streamer(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    logs = FakeLogs()
    logs.add(2)
    logs.fail_next = 2
    subscribe_raw(redis_client)
    service.streamer_lease(deps, APP, "o1").acquire()
    result = service.run_slice(deps, APP, "o1", fetch=logs, slice_s=0.3)
    assert result.errors == 2 and result.outcome == "continue"
    assert published() == ["line 1", "line 2"]


def test_a_full_page_is_followed_at_once(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    logs = FakeLogs()
    logs.add(250)
    redis_client.set(store.cursor_key(APP), "0")
    subscribe_raw(redis_client)
    service.streamer_lease(deps, APP, "o1").acquire()
    timeline: list[str] = []

    def fetch(app: str, token: str | None) -> LogPage:
        timeline.append(f"fetch {token}")
        return logs(app, token)

    def sleep(seconds: float) -> None:
        timeline.append("sleep")
        time.sleep(seconds)

    service.run_slice(replace(deps, sleep=sleep), APP, "o1", fetch=fetch, slice_s=0.5)
    # no sleep after the two full pages, then the normal poll interval
    assert timeline[:5] == ["fetch 0", "fetch 100", "fetch 200", "sleep", "fetch 250"]
    assert len(published()) == 250 and len(set(published())) == 250


def test_ensure_streamer_starts_once(settings: AtlasSettings, redis_client: redis.Redis) -> None:
    started: list[str] = []
    assert fly_client.ensure_streamer(APP, started.append, client=redis_client)
    assert not fly_client.ensure_streamer(APP, started.append, client=redis_client)  # start marker
    redis_client.delete(C.FLY_LOGS_START_KEY.format(app=APP))
    redis_client.set(store.lock_key(APP), "running")
    assert not fly_client.ensure_streamer(APP, started.append, client=redis_client)
    assert started == [APP]


def test_subscribe_registers_starts_and_yields_entries(
    deps: Dependencies, settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    logs = FakeLogs()
    logs.add(3)  # before the subscription: a fresh streamer starts with Fly's recent lines
    stop = threading.Event()
    starts: list[str] = []

    def streamer(app: str) -> None:
        starts.append(app)

        def loop() -> None:
            owner = "t1"
            assert service.streamer_lease(deps, app, owner).acquire()
            had = False
            while not stop.is_set():
                result = service.run_slice(
                    deps, app, owner, fetch=logs, slice_s=0.2, had_subscriber=had
                )
                had = result.had_subscriber
                if result.outcome != "continue":
                    return
            service.streamer_lease(deps, app, owner).release()

        threading.Thread(target=loop, daemon=True).start()

    received: list[str] = []
    gen = fly_client.subscribe(APP, streamer, timeout=5, settings=settings)
    feeder = threading.Timer(0.5, lambda: logs.add(4))
    feeder.start()
    for entry in gen:
        received.append(entry.message)
        if len(received) == 7:
            break
    assert store.live_subscribers(redis_client, APP, now_ms()) == 1
    gen.close()
    assert store.live_subscribers(redis_client, APP, now_ms()) == 0
    stop.set()
    assert received == [f"line {i}" for i in range(1, 8)]
    assert starts == [APP]
