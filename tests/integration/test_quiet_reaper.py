"""The once-a-second sweep stays out of the way: no worker log lines, no stored results,
no Flower rows, one beat line; ``celery inspect conf`` and Flower's worker config work;
the worker warns that the test Redis (no AOF, no RDB) has no persistence."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks.tasks.reaper import SWEEP_STATS_KEY
from atlas_tasks.testing.localstack import LocalCluster, free_port
from tests.support.harness import flower

pytestmark = pytest.mark.integration


def _sweeps(r: redis.Redis) -> int:
    return int(r.hget(SWEEP_STATS_KEY, "sweeps") or 0)


def _reap_results(r: redis.Redis) -> int:
    count = 0
    for key in r.scan_iter("celery-task-meta-*", count=1000):
        meta = json.loads(r.get(key) or "{}")
        count += meta.get("name") == C.TASK_REAP
    return count


def _answers(base: str) -> bool:
    try:
        return httpx.get(f"{base}/api/workers", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_idle_sweeps_leave_no_trace_and_flower_works(cluster: LocalCluster) -> None:
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    worker, beat = cluster.workers[0], cluster.beat
    assert beat is not None
    port = free_port()
    proc = flower({**cluster.env, "FLOWER_UNAUTHENTICATED_API": "true"}, port).start()
    try:
        base = f"http://127.0.0.1:{port}"
        proc.wait_until(lambda: _answers(base), 60, "Flower HTTP answer")
        worker_from, start = len(worker.log()), _sweeps(r)
        deadline = time.monotonic() + 30
        while _sweeps(r) < start + 5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _sweeps(r) >= start + 5, cluster.logs()

        # Nothing found, nothing said: not Celery's received/succeeded lines, not the
        # sweep's provider listing (orphan scans run every second in this cluster).
        quiet = worker.log()[worker_from:]
        assert C.TASK_REAP not in quiet and "HTTP Request" not in quiet, quiet[-2000:]
        assert beat.log().count("Sending due task atlas-reaper") <= 1, beat.log()[-2000:]
        assert _reap_results(r) == 0  # no celery-task-meta-* key per sweep
        tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
        assert not [t for t in tasks.values() if t.get("name") == C.TASK_REAP], tasks

        # Flower's worker page needs the worker's conf, which used to fail to serialise.
        workers = httpx.get(f"{base}/api/workers", params={"refresh": "true"}, timeout=30).json()
        confs = [w.get("conf") for w in workers.values()]
        assert confs and all(
            c and str(c.get("result_backend", "")).startswith("redis://") for c in confs
        ), workers
    finally:
        proc.stop()

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "atlas_tasks.celery_app",
            "inspect",
            "conf",
            "--timeout",
            "10",
        ],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "result_backend" in out.stdout and "could not be cast" not in out.stdout

    assert "has no persistence" in worker.log()
