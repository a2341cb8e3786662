"""Durable stops: ``stop_tracked`` records the stop in Redis before enqueueing, so a stop
whose broker message is lost (or cannot be sent) is re-sent by the reaper."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks import orchestrator
from atlas_tasks.config import reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import NotTracked
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.sessions.reaper import SessionReaper
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.store import STOPS_KEY, SessionStore, store_for
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class _App:
    """Stands in for the Celery app: records (and drops) what would be sent."""

    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, list[Any]]] = []
        self.fail = fail

    def send_task(self, name: str, args: list[Any], **_: Any) -> None:
        if self.fail:
            raise ConnectionRefusedError("broker down")
        self.sent.append((name, args))


@pytest.fixture
def lost_broker(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[_App]:
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("ATLAS_REAP_PROVIDERS", "")
    reset_settings()
    reset_redis_clients()
    app = _App()
    monkeypatch.setattr("atlas_tasks.celery_app.get_app", lambda: app)
    yield app
    reset_redis_clients()


def _running(reg: SessionStore, sid: str) -> None:
    reg.create(
        SessionRecord(
            id=sid,
            provider="mock",
            status=SessionStatus.SPAWNING,
            pod_name=f"atlas-{sid}",
            idle_ttl_ms=60000,
            user_id=1,
        )
    )
    assert reg.finish_spawn(sid, f"pod-{sid}", {"id": f"pod-{sid}"}) == "running"


def _sweep(terminates: list[tuple[list[str], str]]) -> list[str]:
    report = SessionReaper(Dependencies.default()).reap(
        enqueue_terminate=lambda ids, why: terminates.append((ids, why)),
        enqueue_orphan=lambda *_: None,
        scan_orphans=False,
    )
    return report.resent_stops


def test_a_lost_stop_message_is_resent_by_the_reaper(
    lost_broker: _App, redis_client: redis.Redis
) -> None:
    reg = store_for(get_redis())
    _running(reg, "s1")
    orchestrator.stop_tracked("s1")
    assert lost_broker.sent == [(C.TASK_TERMINATE, ["s1", "requested"])]  # then "lost"
    record = reg.get("s1")
    assert record is not None
    assert record.stop_requested_at_ms and record.stop_reason == "requested"
    terminates: list[tuple[list[str], str]] = []
    assert _sweep(terminates) == []  # not due yet: the first message may still arrive
    redis_client.zadd(STOPS_KEY, {"s1": 0})  # fast-forward to the re-send bound
    assert _sweep(terminates) == ["s1"]
    assert terminates == [(["s1"], "requested")]
    again = reg.get("s1")
    assert again is not None and again.stop_resends == 1
    assert 0 < (redis_client.zscore(STOPS_KEY, "s1") or 0)  # re-armed for another round


def test_a_stop_whose_terminate_holds_the_fence_is_not_resent(
    lost_broker: _App, redis_client: redis.Redis
) -> None:
    reg = store_for(get_redis())
    _running(reg, "s1")
    orchestrator.stop_tracked("s1")
    assert reg.begin_terminate("s1", "requested", "worker-task", 5000).verdict == "ok"
    redis_client.zadd(STOPS_KEY, {"s1": 0})
    terminates: list[tuple[list[str], str]] = []
    assert _sweep(terminates) == [] and terminates == []
    reg.finish_terminate("s1", "requested")
    redis_client.zadd(STOPS_KEY, {"s1": 0})
    assert _sweep(terminates) == []
    assert redis_client.zscore(STOPS_KEY, "s1") is None  # ended: left the index


def test_stop_is_recorded_even_when_the_broker_is_down(
    lost_broker: _App, redis_client: redis.Redis
) -> None:
    reg = store_for(get_redis())
    _running(reg, "s1")
    lost_broker.fail = True
    orchestrator.stop_tracked("s1")  # durable once it returns: no error for the caller
    assert redis_client.zscore(STOPS_KEY, "s1") is not None


def test_stop_of_unknown_or_ended_sessions(lost_broker: _App) -> None:
    reg = store_for(get_redis())
    with pytest.raises(NotTracked):
        orchestrator.stop_tracked("nope")
    _running(reg, "s1")
    reg.finish_terminate("s1", "requested")
    orchestrator.stop_tracked("s1")  # already over: a no-op
    assert lost_broker.sent == []


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(
        fakecloud={"boot_delay_s": 0.0},
        stop_resend_ms=1000,
        orphan_grace_ms=1500,
        orphan_scan_interval_ms=1000,
        http_max_backoff_s=1,
    ) as c:
        yield c


def test_lost_stop_still_terminates_the_pod(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in cluster.env.items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    reset_redis_clients()
    clear_provider_cache()
    s = orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=120_000)
    compute = s.wait(timeout=30)

    from atlas_tasks.celery_app import get_app

    app = get_app()
    real_send = app.send_task

    def lose_terminates(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == C.TASK_TERMINATE:
            return None  # the broker lost it
        return real_send(name, *args, **kwargs)

    monkeypatch.setattr(app, "send_task", lose_terminates)
    orchestrator.stop_tracked(s.id)

    _wait(
        lambda: orchestrator.info(s.id).status == "terminated",
        30,
        "the re-sent stop to terminate the session",
    )
    assert all(p.get("id") != compute.id for p in cluster.cloud.live_pods())
    assert orchestrator.info(s.id).reason == "requested"
