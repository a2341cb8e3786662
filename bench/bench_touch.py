"""touch() cost vs one raw redis-py ``PEXPIRE`` round trip on the same connection.

Sessions are real (``create`` + ``finish_spawn``) in a private ``redis-server``. Two
``SessionStore.touch`` flavours are timed against ``PEXPIRE atlas:alive:<id>``:
heartbeat events off (the default: the one-key fast path, a raw ``EVALSHA`` that re-arms
the alive key) and on (``ATLAS_HEARTBEAT_EVENTS``: the full script, which also records
activity, re-scores the deadline index and PUBLISHes a heartbeat). Then 8 threads hammer
a shared pooled client for throughput (touches/s vs PEXPIREs/s).

Target: touch ≤ 1.3× PEXPIRE.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import redis

from atlas_tasks import constants as C
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.store import SessionStore
from atlas_tasks.testing.localstack import RedisServer
from bench.common import Report, count_commands, median, paired_ratio, paired_rounds

NAME = "touch"
TARGET = 1.3
SESSIONS = 200
THREADS = 8


def _sessions(reg: SessionStore, prefix: str, ttl_ms: int) -> list[str]:
    ids = [f"{prefix}{i:012x}" for i in range(SESSIONS)]
    for sid in ids:
        reg.create(
            SessionRecord(
                id=sid,
                provider="runpod",
                status=SessionStatus.SPAWNING,
                pod_name=f"atlas-{sid}",
                idle_ttl_ms=ttl_ms,
                auth="bearer",
                user_id=42,
            )
        )
        reg.finish_spawn(sid, f"pod{sid}", {"id": f"pod{sid}", "status": "running"})
    return ids


def _loop(fn: Callable[[str], Any], ids: list[str]) -> Callable[[int], None]:
    def run(n: int) -> None:
        count = len(ids)
        for i in range(n):
            fn(ids[i % count])

    return run


def _throughput(fn: Callable[[str], Any], ids: list[str], seconds: float) -> float:
    """Calls per second made by ``THREADS`` threads sharing one pooled client."""
    stop = threading.Event()
    counts = [0] * THREADS
    start_gate = threading.Barrier(THREADS + 1)

    def worker(k: int) -> None:
        start_gate.wait()
        n = 0
        count = len(ids)
        while not stop.is_set():
            fn(ids[(k * 31 + n) % count])
            n += 1
        counts[k] = n

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    start_gate.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def run(quick: bool = False) -> Report:
    """Run the touch benchmark."""
    report = Report(NAME)
    rounds, batch = (20, 100) if quick else (80, 200)
    seconds = 0.4 if quick else 1.5
    server = RedisServer().start()
    try:
        # One connection for the single-thread part: every op pays the same socket.
        single = redis.Redis(port=server.port, decode_responses=True, single_connection_client=True)
        ttl = C.DEFAULT_IDLE_TTL_MS
        reg_off = SessionStore(single, publish_heartbeats=False)
        reg_on = SessionStore(single, publish_heartbeats=True)
        ids = _sessions(reg_off, "t", ttl)
        alive_prefix = C.SESSION_ALIVE_KEY.format(id="")

        def pexpire(sid: str) -> Any:
            return single.pexpire(alive_prefix + sid, ttl)

        ops = {
            "pexpire": _loop(pexpire, ids),
            "touch_no_heartbeat": _loop(reg_off.touch, ids),
            "touch_heartbeat": _loop(reg_on.touch, ids),
        }
        for fn in ops.values():  # warm up: load scripts, fill caches
            fn(50)
        samples = paired_rounds(ops, rounds=rounds, batch=batch)
        base_us = median(samples["pexpire"]) * 1e6
        report.add(
            "PEXPIRE round trip (baseline)",
            base_us,
            "us",
            note=f"median of {rounds} rounds × {batch} calls, one connection",
        )
        labels = {
            "touch_no_heartbeat": "touch(), publish_heartbeats=False (default)",
            "touch_heartbeat": "touch(), publish_heartbeats=True (ATLAS_HEARTBEAT_EVENTS)",
        }
        for key, label in labels.items():
            ratio = paired_ratio(samples, key, "pexpire")
            default = key == "touch_no_heartbeat"
            report.add(
                label,
                median(samples[key]) * 1e6,
                "us",
                baseline=base_us,
                baseline_label="PEXPIRE",
                ratio=ratio,
                target=f"ratio <= {TARGET}",
                ok=ratio <= TARGET if default else None,
                note=""
                if default
                else "opt-in: the full script (7 writes + PUBLISH); "
                "the target is for the default touch",
            )

        # What one touch sends and what Redis executes (scripts' inner calls included).
        for key, reg in (("touch_no_heartbeat", reg_off), ("touch_heartbeat", reg_on)):
            sent, executed = count_commands(single, partial(reg.touch, ids[0]))
            report.details.setdefault("commands_per_touch", {})[key] = {
                "round_trips": sent,
                "executed_by_redis": executed,
            }

        # Server-side work per call, from INFO commandstats.
        single.config_resetstat()
        _loop(reg_off.touch, ids)(1000)
        _loop(pexpire, ids)(1000)
        stats = single.info("commandstats")
        report.details["server_usec_per_call"] = {
            "evalsha(touch, no heartbeat)": stats["cmdstat_evalsha"]["usec_per_call"],
            "pexpire": stats["cmdstat_pexpire"]["usec_per_call"],
        }

        # Throughput: 8 threads, one pooled client (connections are per thread).
        pooled = redis.Redis(port=server.port, decode_responses=True, max_connections=64)
        p_off = SessionStore(pooled, publish_heartbeats=False)
        p_on = SessionStore(pooled, publish_heartbeats=True)

        def pooled_pexpire(sid: str) -> Any:
            return pooled.pexpire(alive_prefix + sid, ttl)

        flavours: dict[str, tuple[Callable[[str], Any], list[str]]] = {
            "pexpire": (pooled_pexpire, ids),
            "touch_no_heartbeat": (p_off.touch, ids),
            "touch_heartbeat": (p_on.touch, ids),
        }
        rates: dict[str, list[float]] = {k: [] for k in flavours}
        for _ in range(1 if quick else 2):
            for key, (call, which) in flavours.items():
                rates[key].append(_throughput(call, which, seconds))
        base_rate = max(rates["pexpire"])
        report.add(f"PEXPIRE/s, {THREADS} threads (baseline)", base_rate, "ops/s")
        for key, label in labels.items():
            rate = max(rates[key])
            report.add(
                f"{label}/s, {THREADS} threads",
                rate,
                "ops/s",
                baseline=base_rate,
                baseline_label="PEXPIRE/s",
            )
        report.details["throughput_runs"] = rates
        report.details["per_round_us"] = {
            k: [round(v * 1e6, 2) for v in vals] for k, vals in samples.items()
        }
    finally:
        server.cleanup()
    return report
