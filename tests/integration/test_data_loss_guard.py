"""The reaper's data-loss guard on a real redis-server: when Redis comes back without its
data (a restart without persistence, simulated by FLUSHALL), the orphan reaper kills no
live session's pod, raises an alert, adopts the session pods, and reaps real orphans only
after the grace."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from atlas_tasks import events, orchestrator
from atlas_tasks.config import get_settings, reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import NotTracked
from atlas_tasks.providers import get_provider
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.sessions.reaper import (
    CLUSTER_TOPIC_ID,
    DATA_LOSS_GRACE_KEY,
    ReapReport,
    SessionReaper,
)
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.service import public_compute
from atlas_tasks.sessions.store import EPOCH_KEY, SessionStore, store_for
from atlas_tasks.specs import build_compute_request
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

GRACE_MS = 1500


@pytest.fixture
def env(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("ATLAS_REAP_PROVIDERS", "mock")
    monkeypatch.setenv("ATLAS_ORPHAN_GRACE_MS", "0")
    monkeypatch.setenv("ATLAS_DATA_LOSS_GRACE_MS", str(GRACE_MS))
    reset_settings()
    reset_redis_clients()
    clear_provider_cache()
    MockProvider.reset()
    yield
    MockProvider.reset()
    reset_redis_clients()


class Sweeps:
    """Runs sweeps in-process, recording what would have been enqueued."""

    def __init__(self) -> None:
        self.orphans: list[str] = []
        self.terminates: list[tuple[list[str], str]] = []

    def run(self) -> ReapReport:
        report = SessionReaper(Dependencies.default()).reap(
            enqueue_terminate=lambda ids, why: self.terminates.append((ids, why)),
            enqueue_orphan=lambda _p, pod_id, _n: self.orphans.append(pod_id),
            scan_orphans=True,
        )
        assert not report.skipped
        return report


def _reg() -> SessionStore:
    return store_for(get_redis())


def _pod(name: str) -> str:
    pod = get_provider("mock").spawn_compute(build_compute_request(image="img", name=name))
    return pod.id


def _session(reg: SessionStore) -> tuple[str, str]:
    sid = secrets.token_hex(8)
    pod_name = f"{get_settings().reap_name_prefix}{sid}"
    reg.create(
        SessionRecord(
            id=sid,
            provider="mock",
            status=SessionStatus.SPAWNING,
            pod_name=pod_name,
            idle_ttl_ms=60000,
            user_id=1,
        )
    )
    pod = get_provider("mock").spawn_compute(build_compute_request(image="img", name=pod_name))
    assert reg.finish_spawn(sid, pod.id, public_compute(pod)) == "running"
    return sid, pod.id


def _live_pods() -> set[str]:
    return {c.id for c in get_provider("mock").list_compute()}


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_flushall_kills_nothing_alerts_adopts_then_reaps_real_orphans(
    env: None, redis_client: redis.Redis
) -> None:
    reg = _reg()
    assert reg.ensure_epoch()  # first start
    sessions = dict(_session(reg) for _ in range(6))
    leftover = _pod("atlas-leftover-from-a-test")  # prefixed, not named like a session
    sweeps = Sweeps()
    # Before the loss: sessions are tracked; the leftover is an ordinary orphan.
    first = sweeps.run()
    assert first.orphans == [leftover] and not first.data_loss_detected
    sweeps.orphans.clear()

    redis_client.flushall()  # Redis restarted without persistence

    report = sweeps.run()
    assert report.data_loss_detected and report.data_loss_grace
    assert sweeps.orphans == [] and report.orphans == []
    assert sorted(report.adopted) == sorted(sessions)
    assert report.spared == [leftover]
    assert _live_pods() >= set(sessions.values()) | {leftover}
    assert redis_client.exists(EPOCH_KEY)
    summary = report.summary()
    assert summary["data_loss_detected"] is True and summary["spared"] == 1

    alerts = [e for e in events.history(CLUSTER_TOPIC_ID) if e.type == "alert"]
    assert len(alerts) == 1
    assert alerts[0].data["alert"] == "redis_data_loss"
    assert alerts[0].data["pod_count"] == len(sessions) + 1

    # Adopted sessions are real sessions again: touch works, info shows the pod.
    for sid, pod_id in sessions.items():
        orchestrator.touch(sid)
        info = orchestrator.info(sid)
        assert info.status == "running" and info.compute_id == pod_id
        assert info.idle_ttl_ms >= GRACE_MS

    # During the grace: still nothing killed, and no second alert.
    again = sweeps.run()
    assert again.data_loss_grace and not again.data_loss_detected
    assert sweeps.orphans == [] and again.spared == [leftover] and again.adopted == []

    # After the grace: the real orphan goes, the adopted sessions stay.
    _wait(
        lambda: not redis_client.exists(DATA_LOSS_GRACE_KEY),
        GRACE_MS / 1000 + 5,
        "the data-loss grace to end",
    )
    after = sweeps.run()
    assert not after.data_loss_grace
    assert sweeps.orphans == [leftover]
    assert len([e for e in events.history(CLUSTER_TOPIC_ID) if e.type == "alert"]) == 1


def test_adopted_session_nobody_touches_is_idle_reaped(
    env: None, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_DEFAULT_IDLE_TTL_MS", "300")
    monkeypatch.setenv("ATLAS_DATA_LOSS_GRACE_MS", "300")
    reset_settings()
    reg = _reg()
    reg.ensure_epoch()
    sid, _ = _session(reg)
    redis_client.flushall()
    sweeps = Sweeps()
    assert sweeps.run().adopted == [sid]

    def idle_claimed() -> bool:
        sweeps.run()
        return any(sid in ids for ids, _ in sweeps.terminates)

    _wait(idle_claimed, 5, "the untouched adopted session to be claimed as idle")
    assert ([sid], "idle_timeout") in sweeps.terminates
    assert sweeps.orphans == []


def test_a_new_redis_with_no_prefixed_pods_just_writes_the_epoch(
    env: None, redis_client: redis.Redis
) -> None:
    _pod("someone-elses-pod")
    report = Sweeps().run()
    assert not report.data_loss_detected and not report.data_loss_grace
    assert redis_client.exists(EPOCH_KEY) and not redis_client.exists(DATA_LOSS_GRACE_KEY)
    assert events.history(CLUSTER_TOPIC_ID) == []


def test_epoch_stays_missing_while_a_provider_cannot_be_listed(
    env: None, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A provider that cannot be listed may hold live sessions' pods: deciding "nothing
    # to protect" without it would disarm the guard.
    monkeypatch.setenv("ATLAS_REAP_PROVIDERS", "mock,vast")
    monkeypatch.setenv("ATLAS_VAST_BASE_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("ATLAS_VAST_API_KEY", "k")
    monkeypatch.setenv("ATLAS_HTTP_MAX_RETRIES", "0")
    reset_settings()
    report = Sweeps().run()
    assert any(e.startswith("vast: list") for e in report.errors)
    assert not redis_client.exists(EPOCH_KEY)


def test_touch_of_a_lost_session_is_not_tracked_until_adopted(
    env: None, redis_client: redis.Redis
) -> None:
    reg = _reg()
    reg.ensure_epoch()
    sid, _ = _session(reg)
    redis_client.flushall()
    with pytest.raises(NotTracked):
        orchestrator.touch(sid)
    Sweeps().run()
    orchestrator.touch(sid)


# ------------------------------------------------------------------ end to end


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(
        fakecloud={"boot_delay_s": 0.0},
        orphan_grace_ms=500,
        orphan_scan_interval_ms=500,
        data_loss_grace_ms=4000,
        http_max_backoff_s=1,
    ) as c:
        yield c


def test_flushall_under_a_live_cluster_kills_no_touched_session(
    cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The incident: 6 sessions touched every 0.5 s, Redis restarted empty, all 6 killed.
    for key, value in cluster.env.items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    reset_redis_clients()
    clear_provider_cache()
    sessions = [
        orchestrator.spawn(provider="runpod", gpu="h100", image="img", idle_ttl_ms=60_000)
        for _ in range(6)
    ]
    pods = {s.id: s.wait(timeout=30).id for s in sessions}

    def live() -> set[str]:
        return {str(p.get("id")) for p in cluster.cloud.live_pods()}

    def touch_all() -> None:
        for s in sessions:
            try:
                orchestrator.touch(s.id)
            except NotTracked:
                pass  # lost with the data until the reaper adopts it

    redis.Redis.from_url(cluster.redis_url).flushall()
    # Beat exits when it loses its redbeat lock with the data (single-beat safety); its
    # supervisor restarts it, and that fresh beat is what used to kill every pod.
    if cluster.beat is not None:
        cluster.beat.stop()
    cluster.start_beat_process()
    alerts: list[events.Event] = []

    def alerted() -> bool:
        touch_all()
        alerts[:] = [e for e in events.history(CLUSTER_TOPIC_ID) if e.type == "alert"]
        return bool(alerts)

    _wait(alerted, 20, "the data-loss alert")
    assert alerts[0].data["alert"] == "redis_data_loss"

    def all_adopted() -> bool:
        touch_all()
        return set(orchestrator.list_ids()) >= set(pods)

    _wait(all_adopted, 20, "every session to be adopted")
    # Past the grace, and several orphan scans later, every touched session's pod lives.
    deadline = time.monotonic() + 4 + 3
    while time.monotonic() < deadline:
        touch_all()
        assert set(pods.values()) <= live()
        time.sleep(0.5)
    for sid, pod_id in pods.items():
        info = orchestrator.info(sid)
        assert info.status == "running" and info.compute_id == pod_id
