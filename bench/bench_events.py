"""Event latency publish → subscriber on loopback.

A publisher *process* (so it does not share the GIL with the subscriber) calls
``events.publish`` at a steady rate; a subscriber thread in this process iterates
``events.subscribe`` and records ``receive time − event.ts`` (``ts`` is set by
``publish`` when it builds the event; both clocks are this machine's wall clock).
Baseline, same run, same rate: raw redis-py ``PUBLISH`` of a timestamp read by a raw
``pubsub.get_message`` loop. Target: p99 ≤ 20 ms.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time

import redis

from atlas_tasks import constants as C
from atlas_tasks.testing.localstack import RedisServer
from bench.common import Report, atlas_env, distribution

NAME = "events"
TARGET_P99_MS = 20.0
TOPIC_ID = "benchevents00001"
RAW_CHANNEL = "bench:raw"


def _publisher(url: str, mode: str, count: int, interval_s: float) -> None:
    """Publish ``count`` events, one every ``interval_s`` (runs in a child process)."""
    import os

    os.environ["ATLAS_REDIS_URL"] = url
    from atlas_tasks import events

    client = redis.Redis.from_url(url, decode_responses=True)
    next_at = time.perf_counter()
    for i in range(count):
        if mode == "atlas":
            events.publish(TOPIC_ID, "status", {"status": "running", "n": i}, client=client)
        else:
            client.publish(RAW_CHANNEL, f"{time.time()!r}")
        next_at += interval_s
        delay = next_at - time.perf_counter()
        if delay > 0:
            time.sleep(delay)


def _spawn_publisher(url: str, mode: str, count: int, interval_s: float) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bench_events",
            "--publish",
            mode,
            "--url",
            url,
            "--count",
            str(count),
            "--interval",
            str(interval_s),
        ]
    )


def _wait_subscribed(client: redis.Redis, channel: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        subs = dict(client.pubsub_numsub(channel))
        if int(subs.get(channel, 0)) > 0:
            return
        time.sleep(0.01)
    raise RuntimeError(f"nobody subscribed to {channel} after {timeout}s")


def _measure_atlas(url: str, count: int, interval_s: float) -> list[float]:
    from atlas_tasks import events

    latencies: list[float] = []

    def listen() -> None:
        for event in events.subscribe(TOPIC_ID, replay=False, timeout=5.0):
            latencies.append((time.time() - event.ts) * 1000)
            if len(latencies) >= count:
                return

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    _wait_subscribed(
        redis.Redis.from_url(url, decode_responses=True), C.EVENTS_CHANNEL.format(id=TOPIC_ID)
    )
    proc = _spawn_publisher(url, "atlas", count, interval_s)
    proc.wait(120)
    thread.join(30)
    return latencies


def _measure_raw(url: str, count: int, interval_s: float) -> list[float]:
    client = redis.Redis.from_url(url, decode_responses=True)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(RAW_CHANNEL)
    latencies: list[float] = []

    def listen() -> None:
        idle_since = time.monotonic()
        while len(latencies) < count and time.monotonic() - idle_since < 5.0:
            message = pubsub.get_message(timeout=1.0)
            if message is None:
                continue
            latencies.append((time.time() - float(message["data"])) * 1000)
            idle_since = time.monotonic()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    _wait_subscribed(client, RAW_CHANNEL)
    proc = _spawn_publisher(url, "raw", count, interval_s)
    proc.wait(120)
    thread.join(30)
    pubsub.close()
    return latencies


def run(quick: bool = False) -> Report:
    """Run the event latency benchmark."""
    report = Report(NAME)
    count, interval_s = (500, 0.002) if quick else (2000, 0.002)
    server = RedisServer().start()
    try:
        with atlas_env(ATLAS_REDIS_URL=server.url):
            raw = _measure_raw(server.url, count, interval_s)
            atlas = _measure_atlas(server.url, count, interval_s)
    finally:
        server.cleanup()
    raw_d, atlas_d = distribution(raw), distribution(atlas)
    report.details = {
        "raw_pubsub_ms": raw_d,
        "atlas_events_ms": atlas_d,
        "rate_per_s": round(1 / interval_s),
        "count": count,
    }
    if len(atlas) < count:
        report.details["lost"] = count - len(atlas)
    for q in ("p50", "p95", "p99"):
        target = f"<= {TARGET_P99_MS:g} ms" if q == "p99" else ""
        report.add(
            f"publish→subscribe latency {q}",
            atlas_d[q],
            "ms",
            baseline=raw_d[q],
            baseline_label="raw PUBLISH→get_message",
            target=target,
            ok=atlas_d[q] <= TARGET_P99_MS if q == "p99" else None,
            note=f"{len(atlas)}/{count} events at {1 / interval_s:.0f}/s" if q == "p99" else "",
        )
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--publish", choices=["atlas", "raw"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    ns = parser.parse_args()
    _publisher(ns.url, ns.publish, ns.count, ns.interval)
