"""Spawn burst on one worker node, spawn task overhead, and worker RSS.

One :class:`LocalCluster` (private Redis, fake cloud, beat; one worker process at a
time, except the last burst, which runs two on this 2-core node). Three parts:

1. **Overhead** (fake cloud latency 0): sequential round trips of a no-op Celery task vs
   a spawn. The worker only loads atlas_tasks' tasks, so the no-op is Celery's built-in
   ``celery.accumulate`` (returns its argument; registered on every app, so it runs the
   full path: broker, worker, result backend). Both are timed from ``send`` to
   ``AsyncResult.get()``; the spawn side is ``orchestrator.spawn()`` (record, intent,
   event, enqueue) + the spawn task (provider POST, ``finish_spawn``, event).
2. **Burst**: fake cloud latency 1 s on every call; 500 ``orchestrator.spawn`` calls
   back to back; time from the first enqueue until the last session is ``running``
   (``running_at_ms`` in each record, Redis time). Repeated per pool/concurrency.
3. **Worker RSS** (VmRSS over the worker processes' groups, summed): at rest before
   each burst and the peak sampled every 100 ms during it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from atlas_tasks import constants as C
from atlas_tasks import orchestrator
from atlas_tasks.config import AtlasSettings
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster
from bench.common import Report, group_rss_kb, median, percentile, redis_now_ms

NAME = "spawn_burst"
TARGET_S = 10.0
IMAGE = "ghcr.io/acme/infer:latest"
#: (pool, concurrency) tried, in order, each passed explicitly (LocalCluster's own default
#: is 32; ``AtlasSettings.worker_concurrency`` defaults to 128 threads). gevent/eventlet are
#: not installed here.
#: (pool, concurrency, worker processes).
CONFIGS = [("threads", 64, 1), ("threads", 128, 1), ("threads", 200, 1), ("threads", 64, 2)]
QUICK_CONFIGS = [("threads", 128, 1)]


def _spawn() -> orchestrator.Session:
    return orchestrator.spawn(
        provider="runpod", gpu="h100", image=IMAGE, ports=[(8000, "http")], auth="bearer"
    )


def _overhead(rounds: int) -> dict[str, Any]:
    from celery.result import AsyncResult

    from atlas_tasks.celery_app import get_app

    app = get_app()  # the app for the cluster's broker (settings point at it)
    noop: list[float] = []
    spawn: list[float] = []
    spawn_call: list[float] = []
    for _ in range(3):  # warm-up: connections, script cache, provider clients
        app.send_task("celery.accumulate", args=[1], queue=C.QUEUE_MAINTENANCE).get(timeout=30)
        s = _spawn()
        AsyncResult(f"atlas-spawn-{s.id}", app=app).get(timeout=30)
    for _ in range(rounds):
        t0 = time.perf_counter()
        app.send_task("celery.accumulate", args=[1], queue=C.QUEUE_MAINTENANCE).get(timeout=30)
        noop.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        s = _spawn()
        spawn_call.append(time.perf_counter() - t0)
        result = AsyncResult(f"atlas-spawn-{s.id}", app=app).get(timeout=30)
        spawn.append(time.perf_counter() - t0)
        if not isinstance(result, dict) or not result.get("id"):
            raise RuntimeError(f"spawn {s.id} returned {result!r}")
    return {
        "noop_ms": [round(x * 1e3, 2) for x in noop],
        "spawn_ms": [round(x * 1e3, 2) for x in spawn],
        "spawn_call_ms": [round(x * 1e3, 2) for x in spawn_call],
    }


def _rss_kb(pgids: list[int]) -> int:
    return sum(group_rss_kb(pgid) for pgid in pgids)


class _RssSampler(threading.Thread):
    def __init__(self, pgids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pgids = pgids
        self.peak_kb = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            self.peak_kb = max(self.peak_kb, _rss_kb(self.pgids))
            self.stop_event.wait(0.1)


def _burst(cluster: LocalCluster, n: int, timeout_s: float) -> dict[str, Any]:
    r = get_redis()
    pgids = [w.pid for w in cluster.workers]
    time.sleep(1.0)  # let the fresh worker settle before reading its resting RSS
    rest_kb = _rss_kb(pgids)
    sampler = _RssSampler(pgids)
    sampler.start()
    t0 = redis_now_ms(r)
    started = time.monotonic()
    ids = [_spawn().id for _ in range(n)]
    enqueue_s = time.monotonic() - started
    keys = [C.SESSION_KEY.format(id=sid) for sid in ids]
    deadline = started + timeout_s
    statuses: dict[str, int] = {}
    while time.monotonic() < deadline:
        pipe = r.pipeline(transaction=False)
        for key in keys:
            pipe.hget(key, "status")
        statuses = {}
        for st in pipe.execute():
            statuses[str(st)] = statuses.get(str(st), 0) + 1
        if statuses.get("spawning", 0) == 0:
            break
        time.sleep(0.1)
    sampler.stop_event.set()
    sampler.join()
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "running_at_ms")
    running = [(int(x) - t0) / 1000 for x in pipe.execute() if x]
    return {
        "sessions": n,
        "enqueue_s": round(enqueue_s, 2),
        "statuses": statuses,
        "running": len(running),
        "all_running_s": max(running) if len(running) == n else float("nan"),
        "p50_running_s": percentile(running, 50) if running else float("nan"),
        "rss_rest_mb": round(rest_kb / 1024, 1),
        "rss_peak_mb": round(sampler.peak_kb / 1024, 1),
    }


def _restart_workers(cluster: LocalCluster, pool: str, concurrency: int, processes: int) -> None:
    for proc in cluster.workers:
        proc.stop()
    cluster.workers.clear()
    cluster.pool, cluster.concurrency = pool, concurrency
    for _ in range(processes):
        cluster.add_worker()


def run(quick: bool = False) -> Report:
    """Run the spawn burst benchmark."""
    report = Report(NAME)
    n = 200 if quick else 500
    configs = QUICK_CONFIGS if quick else CONFIGS
    bursts: dict[str, dict[str, Any]] = {}
    with LocalCluster(
        pool=configs[0][0], concurrency=configs[0][1], fakecloud={"latency_s": 0.0}
    ) as cluster:
        over = _overhead(10 if quick else 30)
        cluster.cloud.set_faults(latency_s=1.0)
        for i, (pool, concurrency, processes) in enumerate(configs):
            if i:
                _restart_workers(cluster, pool, concurrency, processes)
            label = f"{pool}/{concurrency}" + (f" × {processes} processes" if processes > 1 else "")
            bursts[label] = _burst(cluster, n, timeout_s=60)
    noop_ms, spawn_ms = median(over["noop_ms"]), median(over["spawn_ms"])
    report.add(
        "no-op Celery task round trip (celery.accumulate, baseline)",
        noop_ms,
        "ms",
        note=f"median of {len(over['noop_ms'])}, send → result",
    )
    report.add(
        "spawn round trip, fake cloud latency 0",
        spawn_ms,
        "ms",
        baseline=noop_ms,
        baseline_label="no-op task",
        note=f"orchestrator.spawn() call alone: {median(over['spawn_call_ms']):.1f} ms",
    )
    default = f"threads/{AtlasSettings.model_fields['worker_concurrency'].default}"
    for label, b in bursts.items():
        t = b["all_running_s"]
        tag = " (settings default)" if label == default else ""
        report.add(
            f"{n} spawns, 1 s cloud latency: all running, pool {label}{tag}",
            t,
            "s",
            baseline=1.0,
            baseline_label="one create call (1 s)",
            target=f"<= {TARGET_S:g} s",
            ok=t <= TARGET_S,
            note=f"enqueue took {b['enqueue_s']}s; p50 {b['p50_running_s']:.2f}s; "
            f"{b['running']}/{n} running",
        )
    for label, b in bursts.items():
        report.add(f"worker RSS at rest, pool {label}", b["rss_rest_mb"], "MB")
        report.add(
            f"worker RSS peak during burst, pool {label}",
            b["rss_peak_mb"],
            "MB",
            baseline=b["rss_rest_mb"],
            baseline_label="at rest",
        )
    report.details = {"overhead": over, "bursts": bursts}
    return report
