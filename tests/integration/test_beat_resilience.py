"""Beat and the sweep under clock skew, sweep backlogs and a Redis restart that wipes
Redis (no persistence): real redis-server, real worker, real beat processes."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks.celery_app import get_app, queue_has_consumers
from atlas_tasks.tasks.reaper import LAST_SWEEP_KEY, SWEEP_STATS_KEY
from atlas_tasks.testing.localstack import LocalCluster, ManagedProcess, celery_beat
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

SKEWED_CELERY = Path(__file__).with_name("skewed_celery.py")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    """Redis (no persistence) + fake cloud + one worker; each test starts its own beat."""
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(beat=False, concurrency=8) as cluster:
        yield cluster


@pytest.fixture
def r(cluster: LocalCluster) -> redis.Redis:
    """A client of the cluster's Redis (strings decoded)."""
    cluster.apply_env()
    return redis.Redis.from_url(cluster.redis_url, decode_responses=True)


def _stat(r: redis.Redis, name: str) -> int:
    return int(r.hget(SWEEP_STATS_KEY, name) or 0)


def _wait(predicate: object, timeout: float, what: str, logs: object) -> None:
    assert callable(predicate) and callable(logs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} after {timeout}s\n{logs()}")


def test_queue_has_consumers(cluster: LocalCluster, r: redis.Redis) -> None:
    assert queue_has_consumers(C.QUEUE_COMPUTE, timeout=5)
    assert not queue_has_consumers("nobody-consumes-this", timeout=1)


def test_a_backlog_of_sweeps_runs_one_sweep(cluster: LocalCluster, r: redis.Redis) -> None:
    # What a worker finds after an outage (or gets from two beats): sweeps one after the
    # other, each finished before the next starts, so the reaper's overlap lock alone
    # would let every one of them run.
    r.delete(SWEEP_STATS_KEY)
    app = get_app()
    for _ in range(10):
        app.send_task(C.TASK_REAP, queue=C.QUEUE_MAINTENANCE)
        time.sleep(0.03)
    _wait(
        lambda: _stat(r, "sweeps") + _stat(r, "skipped") == 10,
        30,
        "10 handled sweeps",
        cluster.logs,
    )
    # The throttle window is 3/4 of the 1 s interval: a drained backlog is one sweep (two
    # if the drain straddles a window on a loaded machine), never ten.
    assert 1 <= _stat(r, "sweeps") <= 2, r.hgetall(SWEEP_STATS_KEY)


@pytest.mark.parametrize("skew_s", [-3.0, 3.0])
def test_sweeps_run_when_beats_clock_is_skewed(
    cluster: LocalCluster, r: redis.Redis, skew_s: float
) -> None:
    r.delete(SWEEP_STATS_KEY, LAST_SWEEP_KEY)
    log_start = len(cluster.workers[0].log())
    beat = ManagedProcess(
        "beat",
        [
            sys.executable,
            str(SKEWED_CELERY),
            str(skew_s),
            "-A",
            "atlas_tasks.celery_app",
            "beat",
            "--loglevel",
            "INFO",
            "-s",
            os.devnull,
        ],
        cluster.env,
    ).start()
    try:
        beat.wait_for("Acquired lock", 60)
        # A beat 3 s behind used to send sweeps that had "expired" on arrival: the worker
        # discarded every one of them as revoked and nothing was ever swept.
        _wait(
            lambda: _stat(r, "sweeps") >= 3,
            30,
            "3 sweeps",
            lambda: f"{cluster.logs()}\n== skewed beat\n{beat.log()[-3000:]}",
        )
        worker_log = cluster.workers[0].log()[log_start:]
        assert "revoked" not in worker_log.lower() and "expired" not in worker_log.lower()
        last = json.loads(r.get(LAST_SWEEP_KEY) or "{}")
        assert last.get("skipped") is False
    finally:
        beat.stop()


def test_beat_survives_a_redis_restart_that_wipes_its_lock(
    cluster: LocalCluster, r: redis.Redis
) -> None:
    assert cluster.redis is not None and not cluster.redis.appendonly
    beat = celery_beat(cluster.env).start()
    try:
        beat.wait_for("Acquired lock", 60)
        _wait(lambda: r.exists(LAST_SWEEP_KEY), 30, "a sweep", cluster.logs)
        cluster.redis.restart()  # no AOF, no RDB: the lock and the schedule are gone
        assert not r.exists(LAST_SWEEP_KEY, f"{C.REDBEAT_KEY_PREFIX}:lock")
        # Beat re-takes its lock, reinstalls the schedule, and sweeps resume.
        _wait(
            lambda: r.exists(LAST_SWEEP_KEY),
            60,
            "a sweep after the restart",
            lambda: f"{cluster.logs()}\n== beat\n{beat.log()[-3000:]}",
        )
        assert beat.alive(), beat.log()[-3000:]
        assert "Acquired lock again" in beat.log()
        assert "LockNotOwnedError" not in beat.log()
        assert r.exists(f"{C.REDBEAT_KEY_PREFIX}:lock")
    finally:
        beat.stop()
