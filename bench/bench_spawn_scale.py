"""Spawn throughput with 1 vs 2 worker processes (issue 17, scale proof).

One :class:`LocalCluster` (private Redis, fake cloud at **latency 0**, no beat): one
worker process, then two (same pool and concurrency per process: threads/64), alternating
1, 2, 1, 2... so a burst of noise on this shared machine hits both. Each burst: the
workers stop consuming the compute queue (Celery remote control ``cancel_consumer``), N
``orchestrator.spawn`` calls are made from this process (record, intent, event, enqueue),
then the workers consume again (``add_consumer``), so the enqueue rate of this one process
is not what is measured. Throughput is (N - 1) / (last - first ``running_at_ms``): the
broker transport takes up to ~1 s to start consuming a re-added queue, which is not
spawn work. With no cloud latency the work is all CPU (Celery, atlas, redis-py, the fake
cloud's HTTP server), so the ratio says how much a second process gains on this machine;
CPU use of the workers, Redis, this process (fake cloud, polling) and the whole machine,
read between the first session seen running and the last, is reported alongside.

Environment: ``ATLAS_BENCH_SPAWN_N`` (500; 100 with ``--quick``),
``ATLAS_BENCH_SPAWN_CONCURRENCY`` (64), ``ATLAS_BENCH_SPAWN_ROUNDS`` (3; 1 quick),
``ATLAS_BENCH_SPAWN_LATENCY`` (fake cloud latency in s, 0).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from atlas_tasks import constants as C
from atlas_tasks import orchestrator
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sessions.store import store_for
from atlas_tasks.testing.localstack import LocalCluster
from bench.common import (
    Report,
    cpu_seconds,
    group_cpu_seconds,
    machine_cpu_seconds,
    median,
    redis_now_ms,
)

NAME = "spawn_scale"
IMAGE = "ghcr.io/acme/infer:latest"


def _spawn() -> str:
    return orchestrator.spawn(
        provider="runpod", gpu="h100", image=IMAGE, ports=[(8000, "http")], auth="bearer"
    ).id


def _statuses(ids: list[str]) -> dict[str, int]:
    store = store_for(get_redis())
    statuses: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        for row in store.get_fields(ids[start : start + 500], "status"):
            st = "missing" if row is None or row.status is None else str(row.status)
            statuses[st] = statuses.get(st, 0) + 1
    return statuses


def _wait_running(
    ids: list[str], timeout_s: float, on_first: Callable[[], None] | None = None
) -> dict[str, int]:
    """Poll the records until none is ``spawning``; returns the statuses. ``on_first`` is
    called once, when the first session is seen running."""
    deadline = time.monotonic() + timeout_s
    statuses: dict[str, int] = {}
    while time.monotonic() < deadline:
        statuses = _statuses(ids)
        if on_first is not None and statuses.get("spawning", 0) < len(ids):
            on_first()
            on_first = None
        if statuses.get("spawning", 0) == 0:
            break
        time.sleep(0.02)
    return statuses


def _set_workers(cluster: LocalCluster, processes: int) -> None:
    for proc in cluster.workers:
        proc.stop()
    cluster.workers.clear()
    for i in range(processes):
        cluster.add_worker(hostname=f"w{i + 1}@%h")
    # Warm-up (imports, connections, script cache, provider client) of every process.
    _wait_running([_spawn() for _ in range(20 * processes)], 60)
    time.sleep(1.0)  # let the fresh workers settle


def _control(method: str, processes: int) -> None:
    """``cancel_consumer``/``add_consumer`` of the compute queue on every worker, waiting
    for each worker's answer."""
    from atlas_tasks.celery_app import get_app
    from atlas_tasks.keyspace_names import keyspace

    queue = keyspace().queue(C.QUEUE_COMPUTE)
    replies = getattr(get_app().control, method)(queue, reply=True, timeout=10, limit=processes)
    if len(replies or []) != processes:
        raise RuntimeError(f"{method}({queue}): {processes} workers, replies {replies!r}")


class _Cpu:
    """CPU seconds so far of the workers, Redis, this process and the whole machine."""

    def __init__(self, cluster: LocalCluster) -> None:
        assert cluster.redis is not None and cluster.redis.process is not None
        self.wall = time.monotonic()
        self.workers = sum(group_cpu_seconds(w.pid) for w in cluster.workers)
        self.redis = cpu_seconds(cluster.redis.process.pid)
        self.bench = time.process_time()
        self.machine = machine_cpu_seconds()[0]

    def fractions(self, before: _Cpu) -> dict[str, float]:
        """CPU used between ``before`` and this reading, as fractions of one core."""
        wall = self.wall - before.wall
        return {
            "workers": round((self.workers - before.workers) / wall, 2),
            "redis": round((self.redis - before.redis) / wall, 2),
            "bench process (fake cloud, polling)": round((self.bench - before.bench) / wall, 2),
            "whole machine": round((self.machine - before.machine) / wall, 2),
        }


def _burst(cluster: LocalCluster, n: int) -> dict[str, Any]:
    r = get_redis()
    store = store_for(r)
    processes = len(cluster.workers)
    _control("cancel_consumer", processes)
    started = time.monotonic()
    ids = [_spawn() for _ in range(n)]
    enqueue_s = time.monotonic() - started
    t0 = redis_now_ms(r)
    _control("add_consumer", processes)
    first: list[_Cpu] = []
    statuses = _wait_running(ids, 120, on_first=lambda: first.append(_Cpu(cluster)))
    cpu = _Cpu(cluster).fractions(first[0]) if first else {}
    running = [
        row.running_at_ms
        for start in range(0, n, 500)
        for row in store.get_fields(ids[start : start + 500], "running_at_ms")
        if row is not None and row.running_at_ms
    ]
    if len(running) == n:
        seconds = (max(running) - min(running)) / 1000
    else:
        seconds = float("nan")
    return {
        "sessions": n,
        "running": len(running),
        "statuses": statuses,
        "first_to_last_running_s": seconds,
        "per_s": (n - 1) / seconds if seconds == seconds and seconds > 0 else float("nan"),
        "add_consumer_to_first_running_s": (min(running) - t0) / 1000 if running else None,
        "enqueue_s_before_start": round(enqueue_s, 2),
        "cpu_fraction_of_one_core": cpu,
        "machine_busy_fraction": round(cpu.get("whole machine", 0.0) / (os.cpu_count() or 1), 2),
    }


def run(quick: bool = False) -> Report:
    """Run the spawn throughput benchmark (1 vs 2 worker processes)."""
    n = int(os.environ.get("ATLAS_BENCH_SPAWN_N") or (100 if quick else 500))
    concurrency = int(os.environ.get("ATLAS_BENCH_SPAWN_CONCURRENCY") or 64)
    rounds = int(os.environ.get("ATLAS_BENCH_SPAWN_ROUNDS") or (1 if quick else 3))
    latency = float(os.environ.get("ATLAS_BENCH_SPAWN_LATENCY") or 0.0)
    report = Report(NAME)
    runs: dict[int, list[dict[str, Any]]] = {1: [], 2: []}
    with LocalCluster(
        workers=0, beat=False, concurrency=concurrency, fakecloud={"latency_s": latency}
    ) as cluster:
        for _ in range(rounds):
            for processes in (1, 2):
                _set_workers(cluster, processes)
                result = _burst(cluster, n)
                runs[processes].append(result)
                print(
                    f"  [spawn_scale] {processes} worker process(es): {n} spawns in "
                    f"{result['first_to_last_running_s']:.2f}s ({result['per_s']:.0f}/s), "
                    f"machine busy {result['machine_busy_fraction']:.0%}",
                    flush=True,
                )
    one = median([r["per_s"] for r in runs[1]])
    two = median([r["per_s"] for r in runs[2]])
    label = f"threads/{concurrency} per process, fake cloud latency {latency:g}s"
    report.add(
        f"{n} spawns/s, 1 worker process ({label})",
        one,
        "ops/s",
        note=f"median of {rounds}; CPU {runs[1][-1]['cpu_fraction_of_one_core']}, "
        f"machine busy {runs[1][-1]['machine_busy_fraction']:.0%}",
    )
    report.add(
        f"{n} spawns/s, 2 worker processes ({label})",
        two,
        "ops/s",
        baseline=one,
        baseline_label="1 worker process",
        note=f"median of {rounds}; CPU {runs[2][-1]['cpu_fraction_of_one_core']}, "
        f"machine busy {runs[2][-1]['machine_busy_fraction']:.0%} of "
        f"{os.cpu_count()} cores",
    )
    report.details = {"runs_1_process": runs[1], "runs_2_processes": runs[2]}
    return report
