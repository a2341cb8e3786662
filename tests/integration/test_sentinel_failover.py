"""Redis Sentinel: the master is SIGKILLed under load and a replica is promoted.

Real processes only: a master ``redis-server``, two replicas and three sentinels
(:mod:`tests.support.sentinel`), a Celery worker and beat whose broker, result backend
and redbeat all go through the sentinels (``ATLAS_REDIS_URL=redis+sentinel://...``), and
the fake cloud. While a load thread spawns sessions and touches the established ones,
the master is killed; the test then checks what the README ("Production Redis") promises:

* every caller call that failed in the window raised ``TransportError`` (never a raw
  ``redis`` or kombu exception), and calls succeed again on their own after the promotion;
* sessions whose records reached the replicas before the kill survive it: still running,
  their pods still up, touches keep working (their idle TTL outlasts the failover);
* a spawn the caller saw succeed either runs, or (its write-ahead record was acknowledged
  by the master but never replicated: asynchronous replication loses that tail) is
  unknown to the new master, and then its pod, if one was made, is reaped as an orphan;
* so no pod leaks: in the end the fake cloud's live pods are exactly the running
  sessions' pods;
* the promoted replica carries ``atlas:epoch``: the data-loss guard does not fire (it is
  for a master that comes back empty, not for a failover);
* spawning and idle reaping work after the failover without any restart.
"""

from __future__ import annotations

import asyncio
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from atlas_tasks import constants as C
from atlas_tasks import orchestrator
from atlas_tasks.errors import NotTracked, TransportError
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sessions.reaper import DATA_LOSS_GRACE_KEY
from atlas_tasks.sessions.store import EPOCH_KEY

# Moved to tests/support/ (atlas_tasks.testing.localstack) by the packaging change.
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.harness import in_ci
from tests.support.sentinel import SentinelSet, redis_server_binary

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"
#: Idle TTL of the load's sessions: far longer than a failover (about 2-4 s here).
LONG_TTL_MS = 30_000
#: The data nodes' password: it must reach no log line and no error message.
PASSWORD = "fail0ver-s3cret"


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    """Master + 2 replicas + 3 sentinels (error in CI when redis-server is missing)."""
    if redis_server_binary() is None:
        if in_ci():
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("redis-server not installed")
    with SentinelSet(replicas=2, sentinels=3, down_after_ms=1000, password=PASSWORD) as deployment:
        yield deployment


def _wait(
    predicate: Callable[[], bool], timeout: float, what: str, logs: Callable[[], str]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{logs()}")


@dataclass
class Load:
    """Caller traffic from a thread: touches (sync and asyncio) of ``touched`` and a spawn
    every 0.25 s."""

    touched: list[str]
    spawned: list[str] = field(default_factory=list)
    errors: list[tuple[float, str, BaseException]] = field(default_factory=list)
    successes: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        next_spawn = 0.0
        while not self.stop.is_set():
            now = time.monotonic()
            if now >= next_spawn:
                next_spawn = now + 0.25
                self._call(
                    "spawn",
                    lambda: self.spawned.append(
                        orchestrator.spawn(
                            provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=LONG_TTL_MS
                        ).id
                    ),
                )
            for session_id in self.touched:
                self._call("touch", functools.partial(orchestrator.touch, session_id))
            # The asyncio caller API goes through redis.asyncio's Sentinel client.
            self._call("atouch", lambda: asyncio.run(orchestrator.atouch(self.touched[0])))
            self.stop.wait(0.05)

    def _call(self, what: str, call: Callable[[], object]) -> None:
        try:
            call()
            self.successes.append((time.monotonic(), what))
        except BaseException as exc:  # everything is recorded; the test judges
            self.errors.append((time.monotonic(), what, exc))

    def succeeded_after(self, t: float, what: str, count: int = 1) -> bool:
        return sum(at > t and w == what for at, w in list(self.successes)) >= count


def _beat_runs() -> int:
    """How many times beat (redbeat, through the sentinels) has sent the reaper sweep."""
    meta = get_redis().hget(f"{C.REDBEAT_KEY_PREFIX}atlas-reaper", "meta")
    return int(json.loads(str(meta))["total_run_count"]) if meta else 0


def _status(session_id: str) -> str:
    try:
        return orchestrator.info(session_id).status
    except NotTracked:
        return "lost"


def test_master_killed_under_load(sentinels: SentinelSet) -> None:
    started = time.monotonic()
    with LocalCluster(
        redis_url=sentinels.url,
        fakecloud={"boot_delay_s": 0.0},
        concurrency=8,
        orphan_grace_ms=1500,
        orphan_scan_interval_ms=1000,
        visibility_timeout_s=6,
        http_max_backoff_s=1,
        spawn_stall_ms=3000,
    ) as cluster:

        def logs() -> str:
            return f"{cluster.logs()}\n{sentinels.logs()}"

        # Established sessions, replicated to both replicas before anything fails.
        established = [
            orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=LONG_TTL_MS)
            for _ in range(3)
        ]
        pods = {s.id: s.wait(timeout=30).id for s in established}
        assert sentinels.wait_replicated() == 2

        load = Load(touched=list(pods))
        thread = threading.Thread(target=load.run, daemon=True)
        thread.start()
        try:
            _wait(
                # Spawns in flight in the worker when the master dies.
                lambda: load.succeeded_after(0, "spawn", 4) and load.succeeded_after(0, "touch"),
                15,
                "the load to reach Redis",
                logs,
            )
            killed_at = time.monotonic()
            old_port = sentinels.kill_master()
            sentinels.wait_for_failover(old_port, timeout=30)
            promoted_at = time.monotonic()
            # Calls resume on their own: no client is reset, no process restarted.
            _wait(
                lambda: (
                    load.succeeded_after(promoted_at, "touch")
                    and load.succeeded_after(promoted_at, "atouch")
                    and load.succeeded_after(promoted_at, "spawn", 3)
                ),
                20,
                "caller calls to succeed after the promotion",
                logs,
            )
        finally:
            load.stop.set()
            thread.join(10)

        # Calls in the window failed as TransportError, and only as that.
        window = [exc for at, _, exc in load.errors if at >= killed_at]
        failed = {what for at, what, _ in load.errors if at >= killed_at}
        assert failed == {"spawn", "touch", "atouch"}, failed
        raw = [exc for _, _, exc in load.errors if not isinstance(exc, TransportError)]
        assert not raw, f"non-TransportError failures: {raw!r}"
        asyncio.run(orchestrator.atouch(established[0].id))
        assert all(PASSWORD not in str(exc) for _, _, exc in load.errors)

        # The failover is not a data loss: the epoch was replicated, no alarm.
        r = get_redis()
        assert r.exists(EPOCH_KEY)
        assert not r.exists(DATA_LOSS_GRACE_KEY)

        # Established sessions survived: running, same pod, touchable.
        for s in established:
            orchestrator.touch(s.id)
            info = orchestrator.info(s.id)
            assert (info.status, info.compute_id) == ("running", pods[s.id]), logs()

        # Each acknowledged spawn ends up running, or lost with the unreplicated tail.
        def settled() -> bool:
            return all(_status(sid) in ("running", "lost") for sid in load.spawned)

        _wait(settled, 30, "every acknowledged spawn to run (or be known lost)", logs)
        statuses = {sid: _status(sid) for sid in load.spawned}
        lost = [sid for sid, status in statuses.items() if status == "lost"]
        # Only a spawn acknowledged right before the kill can be lost.
        assert len(lost) <= 2, f"lost {lost} of {len(statuses)}"
        print(
            f"failover took {promoted_at - killed_at:.1f}s; {len(window)} calls failed in "
            f"the window; {len(statuses)} spawns acknowledged, {len(lost)} lost"
        )

        # No pod leaked: the live pods are exactly the running sessions' pods, counting
        # sessions whose spawn raised TransportError after its record was written.
        def tracked_pods() -> set[str]:
            infos = [orchestrator.info(sid) for sid in orchestrator.list_ids()]
            return {i.compute_id or "" for i in infos if i.status == "running"}

        _wait(
            lambda: {p["id"] for p in cluster.cloud.live_pods()} == tracked_pods(),
            20,
            "the fake cloud's pods to match the running sessions",
            logs,
        )
        assert set(pods.values()) <= tracked_pods()

        # Beat reached the promoted master by itself and goes on sending the sweep.
        runs = _beat_runs()
        _wait(lambda: _beat_runs() >= runs + 2, 15, "beat to send sweeps after failover", logs)
        assert cluster.beat is not None and cluster.beat.alive()

        # Idle reaping and spawning work on the promoted master.
        fresh = orchestrator.spawn(provider="runpod", gpu="h100", image=IMAGE, idle_ttl_ms=1000)
        fresh_pod = fresh.wait(timeout=30).id
        _wait(
            lambda: (
                _status(fresh.id) in ("terminated", "lost")
                and fresh_pod not in {p["id"] for p in cluster.cloud.live_pods()}
            ),
            20,
            "the fresh session to be idle-reaped",
            logs,
        )
        for s in established:
            assert orchestrator.info(s.id).status == "running", logs()
        processes = [*cluster.workers, *([cluster.beat] if cluster.beat else [])]
        assert all(PASSWORD not in p.log() for p in processes)
        assert "sentinel://:**@" in cluster.workers[0].log()  # the broker, masked
    assert time.monotonic() - started < 120
