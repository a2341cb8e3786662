"""Benchmark: N concurrent serverless jobs polled to completion by self-rescheduling tasks.

Runs against a :class:`~atlas_tasks.testing.localstack.LocalCluster` (real redis-server, real
Celery worker, fake cloud over HTTP)::

    python -m bench.bench_jobs --jobs 1000

Measures, for ``atlas_tasks.jobs`` (submit → ``atlas.jobs.run`` → ``atlas.jobs.poll``
chain, every job recorded in Redis with events):

* total time from the first submit to the last final event, and per-job latency;
* provider calls per job (``/run``, ``/status``) from the fake cloud's counters;
* Redis commands per job (``INFO commandstats`` before/after, minus the idle rate of the
  cluster measured just before), with the top commands.

Same-run references:

* ``naive``: the same N jobs, each submitted and then polled by a sleep loop (fixed
  0.5 s) in a pool of as many threads as the worker has slots — what a worker does when
  it sleeps instead of rescheduling.
* ``noop-poll``: the Redis cost of one poll message that does nothing (a poll for an
  unknown job: enqueue, deliver, one Lua call, ack) — Celery's floor per poll.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

import atlas_tasks as atlas
from atlas_tasks import constants as C
from atlas_tasks import jobs
from atlas_tasks.testing.localstack import LocalCluster

FINAL = {"completed", "failed", "cancelled"}


def commandstats(r: redis.Redis) -> dict[str, int]:
    """``{command: calls}`` from ``INFO commandstats``."""
    info = r.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in info.items()}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """Calls per command between two snapshots."""
    return {k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0)}


def idle_rate(r: redis.Redis, seconds: float = 2.0) -> float:
    """Commands per second the cluster issues while idle (worker/broker housekeeping)."""
    before = commandstats(r)
    time.sleep(seconds)
    after = commandstats(r)
    # INFO itself is counted once per snapshot.
    return max(0.0, (sum(diff(after, before).values()) - 1) / seconds)


def endpoint_calls(cluster: LocalCluster, endpoint: str) -> dict[str, int]:
    """The fake cloud's runtime counters of one endpoint."""
    return dict(cluster.cloud.state()["endpoints"].get(endpoint, {}).get("calls", {}))


def pct(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def run_atlas(
    cluster: LocalCluster,
    r: redis.Redis,
    n: int,
    job_input: dict[str, Any],
    timeout: float,
    noise: float,
) -> dict[str, Any]:
    """Submit n jobs through atlas_tasks.jobs and wait for every final event."""
    endpoint = "bench-atlas"
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.psubscribe("atlas:job-events:*")
    finals: dict[str, str] = {}
    before = commandstats(r)
    started = time.monotonic()
    ids = [jobs.submit(endpoint=endpoint, input=job_input).id for _ in range(n)]
    submitted = time.monotonic() - started
    wanted = set(ids)
    deadline = started + timeout
    while len(finals) < n and time.monotonic() < deadline:
        message = pubsub.get_message(timeout=1.0)
        if message is None:
            continue
        _, _, body = str(message["data"]).partition("|")
        event = json.loads(body)
        if event["type"] in FINAL and event["session_id"] in wanted:
            finals[event["session_id"]] = event["type"]
    total = time.monotonic() - started
    after = commandstats(r)
    pubsub.close()
    used = diff(after, before)
    used_total = sum(used.values()) - 1 - noise * total  # minus INFO and idle housekeeping
    records = [r.hgetall(C.JOB_KEY.format(id=i)) for i in ids]
    latencies = [
        (int(x["finished_at_ms"]) - int(x["created_at_ms"])) / 1000
        for x in records
        if x.get("finished_at_ms")
    ]
    # created → accepted by the provider: how long the run task waited in the broker
    queued = [
        (int(x["submitted_at_ms"]) - int(x["created_at_ms"])) / 1000
        for x in records
        if x.get("submitted_at_ms")
    ]
    polls = [int(x.get("polls") or 0) for x in records]
    calls = endpoint_calls(cluster, endpoint)
    return {
        "jobs": n,
        "completed": sum(1 for v in finals.values() if v == "completed"),
        "not_finished": n - len(finals),
        "submit_s": round(submitted, 3),
        "total_s": round(total, 3),
        "latency_p50_s": round(pct(latencies, 0.5), 3),
        "latency_p95_s": round(pct(latencies, 0.95), 3),
        "latency_max_s": round(max(latencies, default=0.0), 3),
        "submit_wait_p50_s": round(pct(queued, 0.5), 3),
        "submit_wait_p95_s": round(pct(queued, 0.95), 3),
        "polls_per_job": round(statistics.mean(polls), 2) if polls else 0,
        "run_calls_per_job": round(calls.get("runs", 0) / n, 3),
        "status_calls_per_job": round(calls.get("status_calls", 0) / n, 3),
        "redis_cmds_per_job": round(used_total / n, 1),
        "redis_top": dict(sorted(used.items(), key=lambda kv: -kv[1])[:10]),
    }


def run_naive(
    cluster: LocalCluster, n: int, threads: int, job_input: dict[str, Any], interval: float
) -> dict[str, Any]:
    """The same jobs, each submitted and polled by a sleeping thread (fixed interval)."""
    endpoint = "bench-naive"
    latencies: list[float] = []
    lock = threading.Lock()

    def one(_: int) -> None:
        begun = time.monotonic()
        job = atlas.run_job(endpoint=endpoint, input=job_input)
        while not job.status.is_terminal:
            time.sleep(interval)
            job = atlas.get_job(job.id, endpoint=endpoint)
        with lock:
            latencies.append(time.monotonic() - begun)

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(one, range(n)))
    total = time.monotonic() - started
    calls = endpoint_calls(cluster, endpoint)
    return {
        "jobs": n,
        "threads": threads,
        "total_s": round(total, 3),
        "latency_p50_s": round(pct(latencies, 0.5), 3),
        "latency_p95_s": round(pct(latencies, 0.95), 3),
        "status_calls_per_job": round(calls.get("status_calls", 0) / n, 3),
    }


def run_noop_polls(r: redis.Redis, n: int, noise: float, timeout: float = 60.0) -> dict[str, Any]:
    """Redis commands of n poll messages for unknown jobs (the per-message floor)."""
    from atlas_tasks.tasks.jobs import poll

    before = commandstats(r)
    started = time.monotonic()
    for i in range(n):
        poll.apply_async((f"noop-{i}", 0, 0), queue=C.QUEUE_JOBS)
    # Done when the queue and the unacked set are empty.
    while time.monotonic() - started < timeout:
        if r.llen(C.QUEUE_JOBS) == 0 and r.hlen("unacked") == 0:
            break
        time.sleep(0.05)
    total = time.monotonic() - started
    after = commandstats(r)
    used = sum(diff(after, before).values()) - 1 - noise * total
    return {"messages": n, "total_s": round(total, 3), "redis_cmds_per_message": round(used / n, 1)}


def table(atlas_res: dict[str, Any], naive: dict[str, Any], noop: dict[str, Any]) -> str:
    """A plain-text table of the headline figures."""
    rows = [
        ("total time (s)", atlas_res["total_s"], naive["total_s"]),
        ("latency p50 (s)", atlas_res["latency_p50_s"], naive["latency_p50_s"]),
        ("latency p95 (s)", atlas_res["latency_p95_s"], naive["latency_p95_s"]),
        ("status calls / job", atlas_res["status_calls_per_job"], naive["status_calls_per_job"]),
        ("redis cmds / job", atlas_res["redis_cmds_per_job"], "-"),
    ]
    lines = [f"{'metric':<22}{'atlas (self-reschedule)':>26}{'naive sleep loop':>20}"]
    lines += [f"{name:<22}{a!s:>26}{b!s:>20}" for name, a, b in rows]
    lines.append(f"noop poll round trip: {noop['redis_cmds_per_message']} redis cmds/message")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m bench.bench_jobs --jobs 1000``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument(
        "--concurrency",
        type=int,
        default=32,
        help="worker slots (threads pool); also the naive thread count",
    )
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--run-time", type=float, default=1.0, help="seconds each job runs at the fake cloud"
    )
    parser.add_argument("--queue-delay", type=float, default=0.2)
    parser.add_argument("--naive-interval", type=float, default=0.5)
    parser.add_argument("--noop", type=int, default=500, help="no-op poll messages")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--json", dest="json_path", help="also write the JSON here")
    args = parser.parse_args(argv)
    job_input = {"output": "ok", "run_time_s": args.run_time, "queue_delay_s": args.queue_delay}
    with LocalCluster(
        beat=False,
        workers=args.workers,
        concurrency=args.concurrency,
        fakecloud={"boot_delay_s": 0.0},
        keyspace_events="false",
    ) as cluster:
        r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
        noise = idle_rate(r)
        atlas_res = run_atlas(cluster, r, args.jobs, job_input, args.timeout, noise)
        noop = run_noop_polls(r, args.noop, noise)
        naive = run_naive(cluster, args.jobs, args.concurrency, job_input, args.naive_interval)
        result = {
            "config": {
                "jobs": args.jobs,
                "workers": args.workers,
                "worker_pool": "threads",
                "concurrency": args.concurrency,
                "job_run_time_s": args.run_time,
                "job_queue_delay_s": args.queue_delay,
                "naive_interval_s": args.naive_interval,
                "idle_redis_cmds_per_s": round(noise, 1),
            },
            "atlas": atlas_res,
            "naive": naive,
            "noop_poll": noop,
            "ratios": {
                "total_time_naive_over_atlas": round(naive["total_s"] / atlas_res["total_s"], 2),
                "status_calls_atlas_over_naive": round(
                    atlas_res["status_calls_per_job"] / max(naive["status_calls_per_job"], 1e-9), 2
                ),
                "redis_cmds_per_job_over_noop_poll": round(
                    atlas_res["redis_cmds_per_job"] / max(noop["redis_cmds_per_message"], 1e-9), 2
                ),
            },
        }
        r.close()
    print(table(atlas_res, naive, noop))
    print(json.dumps(result, indent=2))
    if args.json_path:
        with open(args.json_path, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0 if atlas_res["not_finished"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
