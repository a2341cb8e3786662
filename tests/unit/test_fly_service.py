"""The Fly service without processes: no worker, no flyctl, no HTTP.

Deploys run a fake flyctl runner; the logs streamer polls a fake fetcher under a fake
clock; the token single flight runs a fake CLI. Redis is the test redis-server (the
streamer's fenced commit is Lua), reached through ``Dependencies.from_client``.
"""

from __future__ import annotations

import ast
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

import atlas_tasks.fly.service as service_module
import atlas_tasks.fly.store as store_module
from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.config import AtlasSettings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import ProviderError
from atlas_tasks.fly import service, store
from atlas_tasks.fly.deploy import DeployResult
from atlas_tasks.fly.logs import LogEntry, LogPage
from atlas_tasks.fly.store import DeployExit, StreamerOutcome
from atlas_tasks.fly.token_storage import RedisTokenStorage
from atlas_tasks.fly.tokens import FlyTokens
from atlas_tasks.sealing import generate_key

APP = "web"


@dataclass
class Published:
    """A publisher collecting ``(topic_id, type, data, topic)``."""

    events: list[tuple[str, str, dict[str, Any], str]] = field(default_factory=list)

    def __call__(
        self,
        topic_id: str,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        topic: str = "compute",
    ) -> str | None:
        self.events.append((topic_id, type, dict(data or {}), topic))
        return None

    def types(self) -> list[str]:
        return [type_ for _, type_, _, _ in self.events]


class FakeClock:
    """Wall and monotonic time that only move when the service sleeps."""

    def __init__(self) -> None:
        self.now = time.time()
        self.slept: list[float] = []

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def fake_runner(lines: list[str], *, error: BaseException | None = None) -> Any:
    """A flyctl runner that emits ``lines`` then succeeds (or raises ``error``)."""

    def run(
        app_dir: str | os.PathLike[str], *, on_line: Callable[[str], None] | None = None, **_: Any
    ) -> DeployResult:
        for line in lines:
            if on_line is not None:
                on_line(line)
        if error is not None:
            raise error
        return DeployResult(code=0, lines=len(lines), duration_s=0.25)

    return run


@pytest.fixture
def settings(redis_url: str) -> AtlasSettings:
    return AtlasSettings(
        redis_url=redis_url,
        fly_logs_poll_interval_s=1.0,
        fly_logs_slice_s=5.0,
        fly_logs_lease_s=15.0,
    )


# ----------------------------------------------------------------------------- deploy


def test_deploy_happy_path_publishes_started_lines_and_exit(
    settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    published = Published()
    deps = Dependencies.from_client(redis_client, settings=settings, publish=published)
    outcome = service.deploy(
        deps, "deploy-1", "/srv/p", "api", runner=fake_runner(["building", "released v7"])
    )
    assert outcome == {"ticket": "deploy-1", "ok": True, "code": 0, "lines": 2, "duration_s": 0.25}
    assert published.types() == ["started", "line", "line", "exit"]
    assert {topic for *_, topic in published.events} == {"deploy"}
    assert [data.get("n") for _, t, data, _ in published.events if t == "line"] == [1, 2]
    assert DeployExit.from_data(published.events[-1][2]) == DeployExit(ok=True, code=0)


def test_a_failed_deploy_is_visible_on_the_ticket_and_in_the_result(
    settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    # The real publisher: the ticket's stream in Redis is what subscribe_deploy replays.
    deps = Dependencies.from_client(redis_client, settings=settings)
    failure = ProviderError(
        "fly deploy exited with code 3\nError: token=abc", status=3, provider="fly"
    )
    outcome = service.deploy(
        deps, "deploy-2", None, "/srv/api", runner=fake_runner(["step 1"], error=failure)
    )
    assert outcome["ok"] is False and outcome["code"] == 3
    assert outcome["error"]["kind"] == "provider"
    # Flower shows the result: only the first line, never the quoted output.
    assert outcome["error"]["message"] == "fly deploy exited with code 3"
    history = events.history("deploy-2", topic="deploy", client=redis_client)
    assert [e.type for e in history] == ["started", "line", "exit"]
    final = DeployExit.from_data(history[-1].data)
    assert final.ok is False and final.code == 3 and final.error is not None
    assert "token=abc" in final.error["message"]  # the ticket keeps the whole message


def test_an_unexpected_runner_crash_still_ends_the_ticket(
    settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    published = Published()
    deps = Dependencies.from_client(redis_client, settings=settings, publish=published)
    outcome = service.deploy(
        deps, "deploy-3", None, "/srv/api", runner=fake_runner([], error=RuntimeError("boom"))
    )
    assert outcome["ok"] is False and outcome["code"] is None
    assert outcome["error"]["kind"] == "unknown"
    assert published.types() == ["started", "exit"]
    assert DeployExit.from_data(published.events[-1][2]).error == outcome["error"]


def test_stream_deploy_without_a_ticket_publishes_nothing(
    settings: AtlasSettings, redis_client: redis.Redis
) -> None:
    published = Published()
    deps = Dependencies.from_client(redis_client, settings=settings, publish=published)
    seen: list[str] = []
    result = service.stream_deploy(
        deps, None, "/srv/api", on_line=seen.append, runner=fake_runner(["a", "b"])
    )
    assert result.code == 0 and seen == ["a", "b"] and published.events == []


def test_deploy_exit_record_round_trips() -> None:
    for record in (
        DeployExit(ok=True, code=0),
        DeployExit(ok=False, code=None, error={"kind": "timeout"}),
    ):
        assert DeployExit.from_data(record.to_data()) == record
    assert DeployExit.from_data({}) == DeployExit(ok=False)


# ----------------------------------------------------------------------------- logs streamer


class FakeLogs:
    """An app's log: every fetch returns what was added since the cursor."""

    def __init__(self) -> None:
        self.entries: list[LogEntry] = []
        self.calls = 0

    def add(self, *messages: str) -> None:
        start = len(self.entries)
        self.entries += [
            LogEntry(id=str(start + i), timestamp=f"t{start + i}", message=m)
            for i, m in enumerate(messages, 1)
        ]

    def __call__(self, app: str, cursor: str | None) -> LogPage:
        self.calls += 1
        after = int(cursor) if cursor else 0
        return LogPage(entries=self.entries[after:], next_token=str(len(self.entries)))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def deps(settings: AtlasSettings, redis_client: redis.Redis, clock: FakeClock) -> Dependencies:
    return Dependencies.from_client(
        redis_client,
        settings=settings,
        clock=clock.time,
        monotonic=clock.monotonic,
        sleep=clock.sleep,
    )


def subscribe_raw(deps: Dependencies) -> None:
    store.register_subscriber(
        deps.redis, APP, "s1", now_ms=int(deps.clock() * 1000), ttl_ms=600_000
    )


def test_the_streamer_is_single_instance(deps: Dependencies) -> None:
    logs = FakeLogs()
    logs.add("one", "two")
    subscribe_raw(deps)
    nexts: list[tuple[str, str, bool, int | None]] = []

    def enqueue_next(app: str, owner: str, had: bool, alone: int | None) -> None:
        nexts.append((app, owner, had, alone))

    first = service.poll_logs(deps, APP, enqueue_next=enqueue_next, hostname="w1", fetch=logs)
    assert first["outcome"] == "continue" and first["published"] == 2
    owner = first["owner"]
    assert store.holder(deps.redis, APP) == owner and owner.startswith("w1:")
    assert nexts == [(APP, owner, True, None)]
    # A second chain (a duplicate start) finds the lock taken and does nothing.
    second = service.poll_logs(deps, APP, enqueue_next=enqueue_next, hostname="w2", fetch=logs)
    assert second == {"app": APP, "outcome": "locked"}
    assert not service.streamer_lease(deps, APP, "w2:other").acquire()
    assert store.holder(deps.redis, APP) == owner and len(nexts) == 1
    # The chain itself carries on with its token.
    logs.add("three")
    third = service.poll_logs(deps, APP, owner, True, None, enqueue_next=enqueue_next, fetch=logs)
    assert third["outcome"] == "continue" and third["published"] == 1
    history = events.history(APP, topic="logs", client=deps.redis)
    assert [e["message"] for ev in history for e in ev.data["entries"]] == ["one", "two", "three"]


def test_an_expired_holder_cannot_release_or_write_over_the_new_holder(
    deps: Dependencies,
) -> None:
    subscribe_raw(deps)
    old = store.streamer_lease(deps.redis, APP, "old", ttl_ms=50)
    assert old.acquire()
    deadline = time.monotonic() + 5
    while store.holder(deps.redis, APP) is not None:  # the old holder's lease runs out
        assert time.monotonic() < deadline, "the lease never expired"
        time.sleep(0.01)
    new = service.streamer_lease(deps, APP, "new")
    assert new.acquire()
    assert not old.release() and not old.renew()
    assert store.commit(
        deps.redis,
        APP,
        "old",
        lease_ms=15_000,
        entries=[{"timestamp": "t", "message": "late"}],
        next_cursor="9",
        now_ms=int(deps.clock() * 1000),
    ) == (-1, None)
    assert not store.stop(deps.redis, APP, "old", "no_subscribers")
    enqueued: list[str] = []
    result = service.poll_logs(
        deps,
        APP,
        "old",
        True,
        None,
        fetch=FakeLogs(),
        enqueue_next=lambda *args: enqueued.append(args[1]),
    )
    assert result["outcome"] == StreamerOutcome.LOST_LOCK and enqueued == []
    assert store.holder(deps.redis, APP) == "new"
    assert store.cursor(deps.redis, APP) is None
    assert events.history(APP, topic="logs", client=deps.redis) == []


def test_a_failed_re_enqueue_releases_only_its_own_lock(deps: Dependencies) -> None:
    subscribe_raw(deps)

    def broken(*_: object) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        service.poll_logs(deps, APP, enqueue_next=broken, fetch=FakeLogs())
    assert store.holder(deps.redis, APP) is None  # a subscriber may start a chain at once


def test_the_slice_sleeps_on_the_injected_clock_and_stops_alone(
    deps: Dependencies, clock: FakeClock
) -> None:
    # Nobody ever subscribes: the streamer stops after FLY_LOGS_IDLE_STOP_MS of fake time,
    # across slices, without a single real sleep.
    assert service.streamer_lease(deps, APP, "o1").acquire()
    result = service.run_slice(deps, APP, "o1", fetch=FakeLogs())
    assert result.outcome is StreamerOutcome.CONTINUE and result.alone_since_ms is not None
    assert clock.slept and all(s <= 1.0 for s in clock.slept)
    while result.outcome is StreamerOutcome.CONTINUE:
        result = service.run_slice(
            deps, APP, "o1", fetch=FakeLogs(), alone_since_ms=result.alone_since_ms
        )
    assert result.outcome is StreamerOutcome.STOPPED
    assert store.holder(deps.redis, APP) is None
    last = events.history(APP, topic="logs", client=deps.redis)[-1]
    assert (last.type, last.data) == ("stopped", {"reason": "never_subscribed"})
    alone_since = result.alone_since_ms
    assert alone_since is not None and clock.now * 1000 - alone_since >= C.FLY_LOGS_IDLE_STOP_MS


# ----------------------------------------------------------------------------- tokens


def test_token_single_flight_runs_the_cli_once_for_concurrent_callers(
    tmp_path: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FLY_API_TOKEN", raising=False)
    monkeypatch.delenv("ATLAS_FLY_API_TOKEN", raising=False)
    n = 8
    settings = AtlasSettings(
        secret_key=generate_key(), fly_config_file_enabled=False, fly_cli_timeout_s=5.0
    )
    waiting: set[int] = set()
    waiting_lock = threading.Lock()
    cli_calls: list[str] = []

    def waiter_sleep(seconds: float) -> None:
        # The waiters of the single flight wait through this: record who is waiting.
        with waiting_lock:
            waiting.add(threading.get_ident())
        time.sleep(seconds)

    def cli(app: str) -> str | None:
        cli_calls.append(app)
        # Hold the flight until every other caller is waiting on it (a real race).
        deadline = time.monotonic() + 10
        while len(waiting) < n - 1:
            assert time.monotonic() < deadline, f"only {len(waiting)} callers waited"
            time.sleep(0.01)
        return "FlyV1 from-cli"

    deps = Dependencies.from_client(redis_client, settings=settings, sleep=waiter_sleep)
    # One chain per caller, as in N worker processes sharing Redis.
    chains = [
        FlyTokens.from_deps(deps, RedisTokenStorage(redis_client, settings), cli=cli)
        for _ in range(n)
    ]
    results: list[tuple[str | None, str]] = []
    barrier = threading.Barrier(n)

    def resolve(chain: FlyTokens) -> None:
        barrier.wait()
        result = chain.resolve("my-app")
        results.append((result.token, result.source))

    threads = [threading.Thread(target=resolve, args=(c,)) for c in chains]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert cli_calls == ["my-app"]
    assert results and len(results) == n
    assert set(results) == {("FlyV1 from-cli", "cli")}
    assert redis_client.get(store.token_lock_key("my-app")) is None  # released by its owner


# ----------------------------------------------------------------------------- layering


@pytest.mark.parametrize("module", [service_module, store_module])
def test_the_service_and_store_never_import_celery(module: Any) -> None:
    tree = ast.parse(Path(module.__file__).read_text())
    imported: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.append(node.module)
    assert imported, "the module imports something"
    assert not [
        m
        for m in imported
        if m.split(".")[0] == "celery"
        or m.startswith(("atlas_tasks.celery_app", "atlas_tasks.tasks"))
    ]


def test_every_fly_task_is_routed_to_the_fly_queue() -> None:
    from atlas_tasks.celery_app import get_app

    router = get_app().amqp.router
    for name in (C.TASK_FLY_DEPLOY, C.TASK_FLY_LOGS_POLL):
        assert router.route({}, name)["queue"].name == C.QUEUE_FLY, name
