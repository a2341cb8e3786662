"""The chaos driver: tracked sessions under faults, SIGKILLed workers and restarts.

Drives a :class:`~atlas_tasks.testing.localstack.LocalCluster` (Redis with AOF, fake cloud,
two workers, beat) the way a busy web tier would, while breaking it, then checks
DESIGN.md's invariants on what is left::

    report = run_chaos(ChaosConfig.ci())
    print(report.format())
    assert not report.violations

What happens during the chaos window:

* ``sessions`` sessions are spawned at random times with idle TTLs of a few seconds and
  touched at random (some never, some steadily, some with gaps longer than their TTL);
* the fake cloud answers 5xx, 429 with ``Retry-After`` and 500-after-create at random,
  and now and then holds a create past the client's read timeout before making the pod
  (a create that lands after the client gave up);
* some sessions are stopped shortly after their spawn (often inside its retries), and
  some spawn messages are delivered again (same task id) at random times, whatever the
  session's status is by then;
* every few seconds one worker is SIGKILLed (whole process group) and started again,
  only while the other worker is up; restarted workers carry ``ATLAS_FAULT_KILL_AT``
  crash points, which fire once per run right after a create / a terminate call;
* beat is SIGKILLed and restarted once (its redbeat lock must time out first);
* Redis is restarted once (SIGTERM, AOF on): touches and spawns fail meanwhile, and the
  driver counts those failures instead of crashing;
* prefixed pods with no session ("orphans") are planted at the fake cloud and must be
  reaped; pods without the prefix are planted too and must never be touched.

Then the drain: chaos stops, faults are cleared so pending retries can finish, touching
stops, and the driver waits until every session has ended and no prefixed pod is alive.
The checks count creates per session at the fake cloud (at most one each), require every
session to end ``running``/``terminated``/``failed`` visibly (``wait()`` answers at once
with the compute or an ``AtlasError``), and count exceptions other than
:class:`~atlas_tasks.errors.AtlasError` that reached the driver (the caller).

Time bases. Each successful ``orchestrator.touch`` is recorded with the wall-clock time
just before and just after the call. Redis ``TIME`` (which stamps ``running_at_ms``,
``terminating_at_ms`` and ``ended_at_ms`` in the record, and drives key expiry) reads the
same host clock, so the touch happened inside that window: "no wrongful kill" compares
the termination with *before* + TTL (sound: never a false alarm) and the idle bound uses
*after* + TTL. A touch that raised a Redis error did not happen as far as "no wrongful
kill" is concerned (it cannot excuse a late kill) but it *may* have happened (reply lost
on a dying connection), so it does push the upper bound of the idle check.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import json
import os
import random
import re
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from atlas_tasks import client as orchestrator
from atlas_tasks import constants as C
from atlas_tasks.constants import TERMINATE_FENCE_TTL_MS
from atlas_tasks.errors import AtlasError, AtlasTimeoutError, NotTracked
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster, ManagedProcess, celery_beat
from tests.support.harness import dump_redis

__all__ = ["ChaosConfig", "ChaosReport", "ChaosRun", "Track", "config_from_env", "run_chaos"]

IMAGE = "ghcr.io/acme/infer:latest"
PREFIX = "atlas-"
#: The fake cloud's pod create (RunPod REST v1 ``/pods`` and v2 ``/v2/pods`` alike).
CREATE_MATCH = "POST /*pods"
TERMINAL = ("terminated", "failed")


@dataclass
class ChaosConfig:
    """Knobs of one chaos run (``ci()`` and ``long()`` are the two presets).

    ``idle_slack_s`` is the retry slack of the idle bound ``ttl + reap interval + slack``.
    Its worst case is honest rather than typical: the reaper re-claims a session it has
    already claimed only after fence TTL + 5 s (65 s), which is what ends a terminate
    whose message was lost; and a terminate that dies with its worker after taking the
    fence blocks every *other* terminate of that session until the fence expires (60 s),
    so only its own redelivery (visibility timeout + the 2 s restore scan) ends it
    sooner. Bound: 65 s + visibility timeout (8 s) + 7 s of HTTP backoff and worker
    restarts = 80 s. The report prints the distribution actually observed.
    """

    # Planned above 200 so that at least 200 really spawn: spawn() calls that land while
    # Redis is restarting are refused (TransportError) and do not become sessions.
    sessions: int = 230
    chaos_s: float = 40.0
    ttl_s: tuple[float, float] = (2.0, 6.0)
    #: Spawns happen during the first ``spawn_window`` fraction of the chaos window.
    spawn_window: float = 0.75
    kill_every_s: tuple[float, float] = (3.0, 5.0)
    restart_delay_s: tuple[float, float] = (0.2, 1.5)
    beat_restart_at: float = 0.35
    redis_restart_at: float = 0.6
    #: How long Redis stays down (stopped with SIGTERM, AOF flushed) before it restarts.
    redis_down_s: float = 2.0
    workers: int = 2
    concurrency: int = 16
    error_rate: float = 0.10
    rate_limit_rate: float = 0.05
    create_500_after_create_rate: float = 0.10
    retry_after_s: int = 1
    latency_s: float = 0.01
    reap_interval_ms: int = 1000
    orphan_grace_ms: int = 3000
    orphan_scan_interval_ms: int = 2000
    visibility_timeout_s: int = 8
    http_max_backoff_s: float = 1.0
    fault_points: str = "after_create,after_terminate_call"
    #: Client read timeout of provider calls in the workers; slow creates exceed it.
    http_timeout_s: float = 1.0
    #: Every this many seconds (random in range) one create is held at the fake cloud for
    #: ``slow_create_s`` before the pod is made: past the client's timeout.
    slow_create_every_s: tuple[float, float] = (0.5, 1.5)
    slow_create_s: tuple[float, float] = (1.2, 3.0)
    #: ``ATLAS_CREATE_LOOKUP_WAIT_MS`` of the workers (long enough for the slow creates).
    create_lookup_wait_ms: int = 4000
    #: Fraction of sessions stopped (``stop_tracked``) this soon after their spawn.
    stop_fraction: float = 0.15
    stop_after_s: tuple[float, float] = (0.05, 3.0)
    #: Fraction of sessions whose spawn message is delivered again (same task id) this
    #: long after the spawn, whatever their status is by then.
    redeliver_fraction: float = 0.2
    redeliver_after_s: tuple[float, float] = (0.1, 8.0)
    #: Stalled-spawn re-send (``ATLAS_SPAWN_STALL_MS``): spawn messages the broker loses
    #: when a worker is killed are re-sent instead of waiting 10 minutes for their intent.
    spawn_stall_ms: int = 8000
    idle_slack_s: float = TERMINATE_FENCE_TTL_MS / 1000 + 5 + 8 + 7
    #: Regression guard on the typical case: the worst case above is rare (a kill or the
    #: restart must hit that very terminate), so 95 % of idle sessions must end within
    #: this many seconds of their deadline. Observed p95: 3–10 s under this chaos.
    idle_p95_bound_s: float = 20.0
    #: Rounding slack of the wrongful-kill check (both sides are Redis ms, same clock).
    clock_slack_ms: int = 5
    #: A spawn message lost by the broker (kombu's Redis transport pops a message before
    #: recording it as unacked, so a worker killed or disconnected in between loses it)
    #: leaves its session ``spawning`` until the reaper re-sends it (``spawn_stall_ms``).
    #: With the re-send on, a session still spawning after the drain is a violation.
    lost_spawn_is_violation: bool = True
    #: Prefixed pods planted at the fake cloud with no session (must be reaped) and
    #: foreign pods without the prefix (must never be touched).
    orphans: int = 6
    foreign: int = 3
    #: After everything ended, wait this long and check that nothing new appeared.
    settle_s: float = 5.0
    seed: int = 1234
    label: str = "ci"

    @classmethod
    def ci(cls, **overrides: Any) -> ChaosConfig:
        """CI mode: 230 planned sessions (≥ 200 spawned), 40 s of chaos."""
        return cls(**overrides)

    @classmethod
    def long(cls, **overrides: Any) -> ChaosConfig:
        """Long mode: 560 planned sessions (≥ 500 spawned), 90 s of chaos."""
        return cls(
            **{"sessions": 560, "chaos_s": 90.0, "orphans": 12, "label": "long", **overrides}
        )

    def cluster_settings(self) -> dict[str, Any]:
        """``ATLAS_*`` settings of the cluster under test."""
        return {
            "reap_interval_ms": self.reap_interval_ms,
            "orphan_grace_ms": self.orphan_grace_ms,
            "orphan_scan_interval_ms": self.orphan_scan_interval_ms,
            "visibility_timeout_s": self.visibility_timeout_s,
            "http_max_backoff_s": self.http_max_backoff_s,
            "http_timeout_s": self.http_timeout_s,
            "create_lookup_wait_ms": self.create_lookup_wait_ms,
            "spawn_stall_ms": self.spawn_stall_ms,
        }

    def fakecloud(self) -> dict[str, Any]:
        """Fake cloud options: the fault mix and a second key for per-call ``api_key``."""
        return {
            "error_rate": self.error_rate,
            "rate_limit_rate": self.rate_limit_rate,
            "retry_after_s": self.retry_after_s,
            "create_500_after_create_rate": self.create_500_after_create_rate,
            "latency_s": self.latency_s,
            "seed": self.seed,
        }


@dataclass
class Track:
    """What the driver did to, and knows about, one session."""

    index: int
    ttl_ms: int
    kind: str  # idle | steady | gappy
    spawn_at: float
    touch_until: float
    auth: str
    per_call_key: bool
    id: str | None = None
    spawned_at: float = 0.0  # offset when spawn() returned
    secrets: list[str] = field(default_factory=list)
    spawn_error: str | None = None
    ok_touches: list[int] = field(default_factory=list)  # ms just before each ok touch
    ok_after: list[int] = field(default_factory=list)  # ms just after each ok touch
    maybe_touches: list[int] = field(default_factory=list)  # local ms, Redis error raised
    not_tracked: int = 0
    record: dict[str, str] = field(default_factory=dict)
    #: Stopped by the driver this long after the spawn (None: never).
    stop_after: float | None = None
    stopped: bool = False
    #: Spawn message delivered again this long after the spawn (None: never).
    redeliver_after: float | None = None
    sealed: str | None = None
    pod_name: str | None = None


@dataclass
class ChaosReport:
    """Counts, latencies and invariant violations of one run."""

    config: ChaosConfig
    counts: dict[str, Any] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    timeline: list[str] = field(default_factory=list)
    #: Findings that are not invariant violations (e.g. a worker that exited on its own).
    notes: list[str] = field(default_factory=list)
    lateness_s: dict[str, list[float]] = field(default_factory=dict)
    logs: str = ""

    def format(self) -> str:
        """The counts, the observed idle latencies and any violation, for humans."""
        lines = [
            f"chaos run ({self.config.label}): {self.config.sessions} sessions, "
            f"{self.config.chaos_s:g}s of chaos, seed {self.config.seed}"
        ]
        for key, value in self.counts.items():
            lines.append(f"  {key:28} {json.dumps(value, sort_keys=True, default=str)}")
        for name, values in self.lateness_s.items():
            lines.append(f"  {name:28} {_dist(values)}")
        lines.append(
            "  * sessions whose touches all succeeded or failed cleanly (exact "
            "deadline known); late = time after the idle deadline"
        )
        lines.append("  timeline: " + "; ".join(self.timeline))
        lines += [f"  note: {n}" for n in self.notes]
        if self.violations:
            lines.append(f"  VIOLATIONS ({len(self.violations)}):")
            lines += [f"    - {v}" for v in self.violations[:60]]
        else:
            lines.append("  violations: none")
        return "\n".join(lines)


def _dist(values: list[float]) -> str:
    if not values:
        return "n=0"
    ordered = sorted(values)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))]

    return (
        f"n={len(ordered)} min={ordered[0]:.2f} p50={statistics.median(ordered):.2f} "
        f"p95={pct(0.95):.2f} p99={pct(0.99):.2f} max={ordered[-1]:.2f} (s)"
    )


class _Scheduler:
    """Runs callables at monotonic offsets on a small thread pool."""

    def __init__(self, threads: int) -> None:
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="chaos-driver")
        self.heap: list[tuple[float, int, Callable[[], None]]] = []
        self.lock = threading.Lock()
        self.seq = itertools.count()
        self.t0 = time.monotonic()

    def at(self, offset: float, fn: Callable[[], None]) -> None:
        with self.lock:
            heapq.heappush(self.heap, (offset, next(self.seq), fn))

    def now(self) -> float:
        return time.monotonic() - self.t0

    def run_until(self, end: float) -> None:
        while self.now() < end:
            due: list[Callable[[], None]] = []
            with self.lock:
                while self.heap and self.heap[0][0] <= self.now():
                    due.append(heapq.heappop(self.heap)[2])
            for fn in due:
                self.pool.submit(fn)
            time.sleep(0.01)

    def close(self) -> None:
        with self.lock:
            self.heap.clear()
        self.pool.shutdown(wait=True)


class _Fleet:
    """The worker slots and beat: SIGKILL, restart, and notice deaths we did not cause."""

    def __init__(self, cluster: LocalCluster, cfg: ChaosConfig, sched: _Scheduler) -> None:
        self.cluster = cluster
        self.cfg = cfg
        self.sched = sched
        self.slots: dict[str, ManagedProcess] = {
            f"w{i + 1}@%h": w for i, w in enumerate(cluster.workers)
        }
        self.all_procs: list[ManagedProcess] = [
            *cluster.workers,
            *([cluster.beat] if cluster.beat else []),
        ]
        self.counts: Counter[str] = Counter()
        self.timeline: list[str] = []
        self.killed: set[int] = set()
        self.pending: dict[str, float] = {}  # slot -> restart at (offset)
        self.fault_env_used = False

    def note(self, text: str) -> None:
        self.timeline.append(f"{self.sched.now():.1f}s {text}")

    def ready(self, proc: ManagedProcess) -> bool:
        return proc.alive() and " ready." in proc.log()

    def kill_one(self, rng: random.Random) -> None:
        names = [n for n, p in self.slots.items() if self.ready(p) and n not in self.pending]
        if len(names) < 2:
            return  # keep one worker up: only kill when another is ready
        name = rng.choice(names)
        proc = self.slots[name]
        self.killed.add(proc.pid)
        proc.kill()
        self.counts["worker_kills"] += 1
        self.note(f"SIGKILL {name.split('@')[0]}")
        self.pending[name] = self.sched.now() + rng.uniform(*self.cfg.restart_delay_s)

    def start_worker(self, name: str) -> None:
        extra: dict[str, str] = {}
        if self.cfg.fault_points:
            # Every restarted worker carries the crash points; each fires once per run.
            extra["ATLAS_FAULT_KILL_AT"] = self.cfg.fault_points
        proc = self.cluster.add_worker(hostname=name, wait=False, **extra)
        self.slots[name] = proc
        self.all_procs.append(proc)
        self.counts["worker_restarts"] += 1

    def tick(self) -> None:
        """Restart what is due; notice workers/beat that died on their own."""
        for name, proc in list(self.slots.items()):
            if name in self.pending:
                if self.sched.now() >= self.pending[name]:
                    del self.pending[name]
                    self.start_worker(name)
                continue
            if proc.process is not None and not proc.alive() and proc.pid not in self.killed:
                code = proc.process.returncode
                kind = "fault_point_kills" if code == -9 else "worker_crashes"
                self.counts[kind] += 1
                self.killed.add(proc.pid)
                self.note(f"{name.split('@')[0]} died by itself (exit {code})")
                self.pending[name] = self.sched.now() + 0.2
        beat = self.cluster.beat
        if (
            beat is not None
            and beat.process is not None
            and not beat.alive()
            and beat.pid not in self.killed
        ):
            self.counts["beat_crashes"] += 1
            self.killed.add(beat.pid)
            self.note(f"beat died by itself (exit {beat.process.returncode})")
            self.start_beat()

    def restart_beat(self) -> None:
        beat = self.cluster.beat
        if beat is not None:
            self.killed.add(beat.pid)
            beat.kill()
        self.note("SIGKILL beat")
        self.start_beat()
        self.counts["beat_restarts"] += 1

    def start_beat(self) -> None:
        self.cluster.beat = celery_beat(self.cluster.env).start()
        self.all_procs.append(self.cluster.beat)

    def sync_cluster(self) -> None:
        self.cluster.workers[:] = list(self.slots.values())

    def ensure_all_up(self, timeout: float = 90.0) -> None:
        """After the chaos: every slot running and ready, beat running."""
        for name in list(self.pending):
            del self.pending[name]
            self.start_worker(name)
        for name, proc in list(self.slots.items()):
            if not proc.alive():
                self.start_worker(name)
        self.sync_cluster()
        for proc in self.slots.values():
            proc.wait_for(" ready.", timeout)
        if self.cluster.beat is None or not self.cluster.beat.alive():
            self.start_beat()

    def logs(self) -> str:
        return "\n".join(p.log() for p in self.all_procs)


class ChaosRun:
    """One chaos run against a fresh :class:`LocalCluster` (see :func:`run_chaos`)."""

    def __init__(self, cfg: ChaosConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.per_call_key = "chaos-percall-" + secrets.token_hex(16)
        self.tracks: list[Track] = []
        self.counts: Counter[str] = Counter()
        self.max_untracked_s: dict[str, float] = {}
        self.first_untracked: dict[str, float] = {}
        self.stop_touching = threading.Event()
        #: Sessions whose spawn message was lost by the broker (see :meth:`drain`).
        self.lost: set[str] = set()
        self.notes: list[str] = []
        self.redis_down_s = 0.0
        self.t0_wall = time.time()
        self.orphan_ids: list[str] = []
        self.foreign_ids: list[str] = []

    # ------------------------------------------------------------------ plan
    def plan(self) -> None:
        cfg = self.cfg
        for i in range(cfg.sessions):
            ttl_ms = int(self.rng.uniform(*cfg.ttl_s) * 1000)
            kind = self.rng.choices(["idle", "steady", "gappy"], [25, 45, 30])[0]
            spawn_at = self.rng.uniform(0.0, cfg.chaos_s * cfg.spawn_window)
            touch_until = min(cfg.chaos_s, spawn_at + self.rng.uniform(0.0, cfg.chaos_s))
            self.tracks.append(
                Track(
                    index=i,
                    ttl_ms=ttl_ms,
                    kind=kind,
                    spawn_at=spawn_at,
                    touch_until=touch_until,
                    auth=self.rng.choice(["bearer", "bearer", "signed_url", "none"]),
                    per_call_key=self.rng.random() < 0.5,
                    stop_after=(
                        self.rng.uniform(*cfg.stop_after_s)
                        if self.rng.random() < cfg.stop_fraction
                        else None
                    ),
                    redeliver_after=(
                        self.rng.uniform(*cfg.redeliver_after_s)
                        if self.rng.random() < cfg.redeliver_fraction
                        else None
                    ),
                )
            )

    # ------------------------------------------------------------------ driver actions
    def spawn(self, t: Track, sched: _Scheduler) -> None:
        if self.stop_touching.is_set():
            return
        try:
            s = orchestrator.spawn(
                provider="runpod",
                gpu="h100",
                image=IMAGE,
                idle_ttl_ms=t.ttl_ms,
                auth=t.auth,
                user_id=t.index,
                ports=[(8000, "http")],
                api_key=self.per_call_key if t.per_call_key else None,
            )
        except Exception as exc:  # Redis down: the web tier sees an error, nothing else
            t.spawn_error = type(exc).__name__
            self.counts[f"spawn_error:{type(exc).__name__}"] += 1
            self.caller_error("spawn", exc)
            return
        t.id = s.id
        t.pod_name = s.pod_name
        t.spawned_at = sched.now()
        t.secrets = [x for x in (s.token, s.signing_secret) if x]
        self.counts["spawned"] += 1
        if t.redeliver_after is not None:
            try:  # the sealed payload, as the broker message carries it
                t.sealed = cast(
                    "str | None", get_redis().hget(f"atlas:session:{s.id}", "spawn_sealed")
                )
            except redis.RedisError:
                t.sealed = None
            if t.sealed:
                sched.at(sched.now() + t.redeliver_after, lambda: self.redeliver(t))
        if t.stop_after is not None:
            sched.at(sched.now() + t.stop_after, lambda: self.stop(t))
        if t.kind != "idle":
            sched.at(sched.now() + self.next_gap(t), lambda: self.touch(t, sched))

    def caller_error(self, call: str, exc: BaseException) -> None:
        """Count an exception that reached the caller; anything but an ``AtlasError`` is
        a raw exception (a violation: callers handle one error type)."""
        if isinstance(exc, AtlasError):
            self.counts[f"caller_atlas_errors:{call}"] += 1
        else:
            self.counts[f"caller_raw_exceptions:{call}:{type(exc).__name__}"] += 1

    def stop(self, t: Track) -> None:
        """The user stops the session (often while its spawn is still retrying)."""
        if self.stop_touching.is_set() or t.id is None:
            return
        try:
            orchestrator.stop_tracked(t.id)
            t.stopped = True
            self.counts["stops"] += 1
        except NotTracked:
            self.counts["stops_not_tracked"] += 1
        except Exception as exc:
            self.caller_error("stop_tracked", exc)

    def redeliver(self, t: Track) -> None:
        """Deliver the session's spawn message again (same task id), as the broker does
        after a visibility timeout, whatever the session's status is by now."""
        if self.stop_touching.is_set() or t.id is None or not t.sealed:
            return
        from atlas_tasks.celery_app import get_app

        try:
            status, compute_id = cast(
                list["str | None"],
                get_redis().hmget(f"atlas:session:{t.id}", "status", "compute_id"),
            )
            if status == "terminating":
                status += "_with_compute_id" if compute_id else "_without_compute_id"
            get_app().send_task(
                C.TASK_SPAWN,
                args=[t.id, t.sealed],
                task_id=f"atlas-spawn-{t.id}",
                queue=C.QUEUE_COMPUTE,
                argsrepr=repr((t.id, "<sealed>")),
                kwargsrepr="{}",
            )
            self.counts[f"redelivered_in:{status}"] += 1
        except Exception:  # Redis down: a real broker would not redeliver either
            self.counts["redeliveries_failed"] += 1

    def next_gap(self, t: Track) -> float:
        ttl = t.ttl_ms / 1000
        if t.kind == "steady":
            return self.rng.uniform(0.2, 0.7) * ttl
        return self.rng.uniform(0.3, 1.6) * ttl

    def touch(self, t: Track, sched: _Scheduler) -> None:
        if self.stop_touching.is_set() or sched.now() > t.touch_until or t.id is None:
            return
        before = int(time.time() * 1000)
        try:
            orchestrator.touch(t.id)
            after = int(time.time() * 1000) + 1
            t.ok_touches.append(before)
            t.ok_after.append(after)
            self.counts["touches_ok"] += 1
            if after - before > 50:
                self.counts["touches_slow"] += 1  # e.g. retried across the Redis restart
        except NotTracked:
            t.not_tracked += 1
            self.counts["touches_not_tracked"] += 1
            return  # over (idled out): a real browser would stop too
        except (redis.RedisError, AtlasError) as exc:
            # Redis down (a TransportError, or a raw RedisError from an older client)
            t.maybe_touches.append(int(time.time() * 1000))
            self.counts[f"touches_failed:{type(exc).__name__}"] += 1
            self.caller_error("touch", exc)
        sched.at(sched.now() + self.next_gap(t), lambda: self.touch(t, sched))

    @staticmethod
    def plant(cluster: LocalCluster, name: str) -> str:
        """Create a pod at the fake cloud behind atlas's back (no faults, no session)."""
        body = {"name": name, "image": IMAGE, "gpu": {"id": "NVIDIA H100 80GB HBM3"}}
        return cluster.cloud.ctx.state.create_pod(body, boot_delay_s=0).id

    # ------------------------------------------------------------------ monitor
    def watch_untracked(self, cluster: LocalCluster, now: float) -> None:
        """Track how long each live prefixed pod stays untracked (reported, not asserted
        during the chaos: the end state is what is asserted)."""
        try:
            pods = [p for p in cluster.cloud.state()["pods"] if p["name"].startswith(PREFIX)]
            r = get_redis()
            pipe = r.pipeline(transaction=False)
            for p in pods:
                pipe.hmget(f"atlas:session:{p['name'][len(PREFIX) :]}", "status", "compute_id")
            pipe.zrange("atlas:intents", 0, -1)
            results = pipe.execute()
        except redis.RedisError:
            return
        intents = set(results[-1])
        seen = set()
        for pod, (status, compute_id) in zip(pods, results[:-1], strict=True):
            sid = pod["name"][len(PREFIX) :]
            tracked = sid in intents or (
                status in ("spawning", "running", "terminating")
                and compute_id in (None, "", pod["id"])
            )
            if tracked:
                continue
            seen.add(pod["id"])
            first = self.first_untracked.setdefault(pod["id"], now)
            self.max_untracked_s[pod["id"]] = now - first
        for pod_id in list(self.first_untracked):
            if pod_id not in seen:
                del self.first_untracked[pod_id]

    # ------------------------------------------------------------------ the run
    def run(self) -> ChaosReport:
        cfg = self.cfg
        report = ChaosReport(cfg)
        self.plan()
        cloud_opts = {**cfg.fakecloud(), "api_keys": ["fake-key", self.per_call_key]}
        started = time.monotonic()
        with LocalCluster(
            appendonly=True,
            workers=cfg.workers,
            concurrency=cfg.concurrency,
            fakecloud=cloud_opts,
            **cfg.cluster_settings(),
        ) as cluster:
            setup_s = time.monotonic() - started
            sched = _Scheduler(16)
            self.t0_wall = time.time()
            fleet = _Fleet(cluster, cfg, sched)
            for t in self.tracks:
                sched.at(t.spawn_at, functools.partial(self.spawn, t, sched))
            for i in range(cfg.foreign):
                self.foreign_ids.append(self.plant(cluster, f"someone-elses-{i}"))
            for i in range(cfg.orphans):
                sched.at(
                    self.rng.uniform(0, cfg.chaos_s * 0.9),
                    functools.partial(
                        lambda n: self.orphan_ids.append(self.plant(cluster, n)),
                        f"{PREFIX}orphan{i:04d}",
                    ),
                )
            chaos = threading.Thread(
                target=self.chaos_loop, args=(cluster, fleet, sched), name="chaos", daemon=True
            )
            chaos.start()
            try:
                sched.run_until(cfg.chaos_s)
            finally:
                self.stop_touching.set()
                chaos.join(120)
                sched.close()
            chaos_end = time.monotonic()
            report.timeline = fleet.timeline
            fleet.ensure_all_up()
            fleet.note("all workers ready, beat up")
            faults = cluster.cloud.state()["faults_injected"]
            cluster.cloud.clear_faults()
            fleet.note("faults cleared, drain")
            drained = self.drain(cluster, sched, fleet)
            drain_s = time.monotonic() - chaos_end
            self.collect(cluster, report, fleet, faults, setup_s, drain_s, drained)
            report.logs = fleet.logs()
            fleet.sync_cluster()
        return report

    def chaos_loop(self, cluster: LocalCluster, fleet: _Fleet, sched: _Scheduler) -> None:
        cfg = self.cfg
        rng = random.Random(cfg.seed + 1)
        next_kill = rng.uniform(*cfg.kill_every_s)
        beat_at, redis_at = cfg.beat_restart_at * cfg.chaos_s, cfg.redis_restart_at * cfg.chaos_s
        beat_done = redis_done = False
        next_watch = 0.0
        next_slow = rng.uniform(*cfg.slow_create_every_s)
        while not self.stop_touching.is_set():
            now = sched.now()
            fleet.tick()
            if now >= next_slow:
                # the next create is made late: after the worker's client gave up on it
                cluster.cloud.fail_next(
                    CREATE_MATCH, None, latency_s=rng.uniform(*cfg.slow_create_s)
                )
                self.counts["slow_creates_scripted"] += 1
                next_slow = now + rng.uniform(*cfg.slow_create_every_s)
            if now >= next_kill:
                fleet.kill_one(rng)
                next_kill = now + rng.uniform(*cfg.kill_every_s)
            if not beat_done and now >= beat_at:
                fleet.restart_beat()
                beat_done = True
            if not redis_done and now >= redis_at and cluster.redis is not None:
                fleet.note("Redis stopped")
                t = time.monotonic()
                cluster.redis.stop()
                time.sleep(cfg.redis_down_s)
                cluster.redis.start()  # same port and directory: the AOF is replayed
                self.counts["redis_restarts"] += 1
                self.redis_down_s = round(time.monotonic() - t, 2)
                fleet.note("Redis back")
                redis_done = True
            if now >= next_watch:
                self.watch_untracked(cluster, now)
                next_watch = now + 1.0
            time.sleep(0.05)
        fleet.sync_cluster()

    def drain(self, cluster: LocalCluster, sched: _Scheduler, fleet: _Fleet) -> bool:
        """Wait until every session ended and no prefixed pod lives (or the bound).

        Sessions stuck in ``spawning`` whose spawn message is nowhere any more (not queued,
        not unacked, so no worker will ever run it) are set aside in ``self.lost`` after
        being seen so for 2 s (without the stalled-spawn re-send) or for all its re-sends
        (with it): waiting longer cannot change them.
        """
        cfg = self.cfg
        bound = cfg.ttl_s[1] + cfg.reap_interval_ms / 1000 + cfg.idle_slack_s + 10
        deadline = time.monotonic() + bound
        ids = [t.id for t in self.tracks if t.id]
        r = get_redis()
        suspects: dict[str, float] = {}
        # With the stalled-spawn re-send on, a spawn with no message left is not lost
        # yet: the reaper re-sends it (up to SPAWN_MAX_RESENDS times, one stall apart)
        # and then resolves its intent. Only what outlives all that is set aside.
        lost_after = (
            cfg.spawn_stall_ms / 1000 * (C.SPAWN_MAX_RESENDS + 1) + 5
            if cfg.lost_spawn_is_violation
            else 2.0
        )
        while time.monotonic() < deadline:
            fleet.tick()
            self.watch_untracked(cluster, sched.now())
            pipe = r.pipeline(transaction=False)
            for sid in ids:
                pipe.hget(f"atlas:session:{sid}", "status")
            open_ids = [
                sid for sid, st in zip(ids, pipe.execute(), strict=True) if st not in TERMINAL
            ]
            live = [p for p in cluster.cloud.state()["pods"] if p["name"].startswith(PREFIX)]
            now = time.monotonic()
            lost = self.lost_spawns(r, open_ids)
            suspects = {sid: suspects.get(sid, now) for sid in lost}
            self.lost = {sid for sid, since in suspects.items() if now - since >= lost_after}
            if set(open_ids) <= self.lost and all(
                p["name"][len(PREFIX) :] in self.lost for p in live
            ):
                fleet.note("drained" + (f" ({len(self.lost)} lost spawn)" if self.lost else ""))
                time.sleep(cfg.settle_s)  # anything late (a stray redelivery) shows now
                return True
            time.sleep(0.5)
        fleet.note("drain bound reached")
        return False

    @staticmethod
    def lost_spawns(r: redis.Redis, open_ids: list[str]) -> set[str]:
        """Open sessions still ``spawning`` with no spawn message left anywhere (a pod
        made by an earlier attempt may exist: the intent covers it until it expires)."""
        if not open_ids:
            return set()
        pipe = r.pipeline(transaction=False)
        for sid in open_ids:
            pipe.hget(f"atlas:session:{sid}", "status")
        spawning = [
            sid for sid, st in zip(open_ids, pipe.execute(), strict=True) if st == "spawning"
        ]
        queued = cast(list[str], r.lrange("compute", 0, -1))
        messages = "\n".join([*queued, *cast(list[str], r.hvals("unacked"))])
        return {sid for sid in spawning if f"atlas-spawn-{sid}" not in messages}

    # ------------------------------------------------------------------ checks
    def collect(
        self,
        cluster: LocalCluster,
        report: ChaosReport,
        fleet: _Fleet,
        faults: dict[str, int],
        setup_s: float,
        drain_s: float,
        drained: bool,
    ) -> None:
        cfg = self.cfg
        r = get_redis()
        for t in self.tracks:
            if t.id:
                t.record = cast(dict[str, str], r.hgetall(f"atlas:session:{t.id}"))
        state = cluster.cloud.state()
        v = report.violations
        if not drained:
            v.append("drain did not finish within its bound")
        self.check_pods(state, v)
        idle_end, idle_decision = self.check_sessions(v, r)
        self.check_secrets(cluster, v)
        creates = self.check_creates(state, v)
        invisible = self.check_visible_ends(v)
        raw = {
            k.split(":", 1)[1]: n
            for k, n in self.counts.items()
            if k.startswith("caller_raw_exceptions:")
        }
        for what, n in raw.items():
            v.append(f"{n} raw exception(s) reached the caller: {what}")
        report.notes += self.notes
        known = {t.id for t in self.tracks if t.id}
        leftover = sorted(str(x) for x in r.smembers("atlas:sessions"))
        if leftover:
            # e.g. spawn() raised while Redis went away after recording the session:
            # no pod can exist (nothing was enqueued); its intent expires after 10 min.
            report.notes.append(
                f"{len(leftover)} session(s) still tracked after the drain, "
                f"{len([x for x in leftover if x not in known])} unknown to "
                f"the driver: {leftover[:5]}"
            )
        report.lateness_s = {
            "idle→terminating (s late)*": idle_decision,
            "idle→terminated (s late)*": idle_end,
            "untracked pod lifetime": list(self.max_untracked_s.values()),
        }
        statuses = Counter(t.record.get("status", "missing") for t in self.tracks if t.id)
        logs = fleet.logs()

        def count(marker: str) -> int:
            return len([x for x in v if marker in x])

        counts: dict[str, Any] = {
            "invariants": {
                "leaked pods": count("leaked pod"),
                "wrongful kills": count("before its idle deadline") + count("orphan reaper killed"),
                "sessions with >1 create": len([n for n in creates.values() if n > 1]),
                "stuck sessions": count("after the drain"),
                "ends not visible to wait()": invisible,
                "raw exceptions at the caller": sum(raw.values()),
            },
            "creates": {
                "total": sum(creates.values()),
                "max per session": max(creates.values(), default=0),
                "sessions with a create": len([n for n in creates.values() if n]),
                "sessions": len(creates),
            },
            "stops and redeliveries": {
                "stops": self.counts["stops"],
                "stops of ended sessions": self.counts["stops_not_tracked"],
                "redelivered in": {
                    k.split(":", 1)[1]: n
                    for k, n in self.counts.items()
                    if k.startswith("redelivered_in:")
                },
                "slow creates scripted": self.counts["slow_creates_scripted"],
            },
            "caller AtlasErrors": {
                k.split(":", 1)[1]: n
                for k, n in self.counts.items()
                if k.startswith("caller_atlas_errors:")
            },
            "sessions": {
                "planned": cfg.sessions,
                "spawned": self.counts["spawned"],
                "spawn_errors": {
                    k.split(":", 1)[1]: n
                    for k, n in self.counts.items()
                    if k.startswith("spawn_error:")
                },
            },
            "final statuses": dict(statuses),
            "kills": {
                "worker_sigkill": fleet.counts["worker_kills"],
                "fault_point_self_kill": fleet.counts["fault_point_kills"],
                "worker_crashes": fleet.counts["worker_crashes"],
                "beat_crashes": fleet.counts["beat_crashes"],
            },
            "restarts": {
                "worker": fleet.counts["worker_restarts"],
                "beat": fleet.counts["beat_restarts"],
                "redis": self.counts["redis_restarts"],
                "redis_down_s": self.redis_down_s,
            },
            "faults injected": {k: n for k, n in faults.items() if n},
            "cloud": {
                k: state["totals"].get(k, 0)
                for k in ("creates", "deletes", "delete_calls", "lists", "gets")
            },
            "retries (worker logs)": _retry_counts(logs),
            # every faulted provider call is retried, by the HTTP layer (429, 5xx on
            # idempotent calls) or by the create loop (5xx on POST /pods: lookup, retry)
            "faulted calls retried": sum(
                faults.get(k, 0) for k in ("rate_limited", "error_5xx", "create_500_after_create")
            ),
            "planted pods": {
                "orphans": self.counts["orphans_planted"],
                "orphans reaped": self.counts["orphans_reaped"],
                "foreign (untouched)": len(self.foreign_ids),
            },
            "touches": {
                "ok": self.counts["touches_ok"],
                "ok_but_slower_than_50ms": self.counts["touches_slow"],
                "not_tracked": self.counts["touches_not_tracked"],
                "failed_redis": {
                    k.split(":", 1)[1]: n
                    for k, n in self.counts.items()
                    if k.startswith("touches_failed:")
                },
            },
            "raw secrets searched in Redis": self.counts["secrets_searched"],
            "broker at the end": {"compute queue": r.llen("compute"), "unacked": r.hlen("unacked")},
            "timings_s": {
                "setup": round(setup_s, 1),
                "chaos": cfg.chaos_s,
                "drain": round(drain_s, 1),
            },
        }
        report.counts = counts
        # The run must actually have been chaotic, or the checks above prove nothing.
        if fleet.counts["worker_kills"] == 0:
            v.append("no worker was killed")
        if self.counts["redis_restarts"] != 1 or fleet.counts["beat_restarts"] != 1:
            v.append("Redis and beat must each restart once")
        for kind in ("rate_limited", "error_5xx", "create_500_after_create"):
            if not faults.get(kind):
                v.append(f"no {kind} fault was injected")
        if cfg.stop_fraction and not self.counts["stops"]:
            v.append("no session was stopped")
        if cfg.redeliver_fraction and not any(k.startswith("redelivered_in:") for k in self.counts):
            v.append("no spawn was redelivered")
        if cfg.slow_create_every_s and not self.counts["slow_creates_scripted"]:
            v.append("no slow create was injected")
        if fleet.counts["worker_crashes"] or fleet.counts["beat_crashes"]:
            # Not an invariant: a supervisor restarts them (compose: restart: unless-stopped)
            # and their unacked tasks are redelivered. Reported so it is not forgotten.
            report.notes.append(
                f"{fleet.counts['worker_crashes']} worker / {fleet.counts['beat_crashes']} "
                f"beat exit(s) not caused by the driver (restarted like a supervisor would); "
                f"first error: {_first_fatal(logs)}"
            )

    def check_pods(self, state: dict[str, Any], v: list[str]) -> None:
        by_id = {t.id: t for t in self.tracks if t.id}
        # no untracked prefixed pod alive
        for pod in state["pods"]:
            if not pod["name"].startswith(PREFIX):
                continue
            t = by_id.get(pod["name"][len(PREFIX) :])
            rec = t.record if t else {}
            if t is not None and t.id in self.lost:
                self.notes.append(
                    f"pod {pod['id']} of lost spawn {t.id} lives on under its "
                    f"intent (until the intent expires)"
                )
                if self.cfg.lost_spawn_is_violation:
                    v.append(f"pod {pod['id']} of lost spawn {t.id} still alive")
                continue
            if rec.get("status") != "running" or rec.get("compute_id") != pod["id"]:
                v.append(
                    f"leaked pod {pod['id']} {pod['name']} (session status "
                    f"{rec.get('status', 'unknown')})"
                )
        # planted orphans end terminated; foreign pods are never touched
        live_ids = {p["id"] for p in state["pods"]}
        all_pods = {p["id"]: p for p in state["pods"] + state["terminated_pods"]}
        for pod_id in self.foreign_ids:
            calls = all_pods[pod_id].get("calls", {})
            if pod_id not in live_ids or calls.get("deletes") or calls.get("delete_calls"):
                v.append(f"foreign pod {pod_id} was touched: {calls}")
        self.counts["orphans_planted"] = len(self.orphan_ids)
        self.counts["orphans_reaped"] = len([i for i in self.orphan_ids if i not in live_ids])
        # at most one pod ever created per session
        names = Counter(p["name"] for p in state["pods"] + state["terminated_pods"])
        for name, n in names.items():
            if n > 1 and not name.startswith(f"{PREFIX}orphan"):
                v.append(f"{n} pods created for {name}")
            if (
                name.startswith(PREFIX)
                and name[len(PREFIX) :] not in by_id
                and not name.startswith(f"{PREFIX}orphan")
            ):
                self.counts["pods_of_unknown_sessions"] += 1

    def check_creates(self, state: dict[str, Any], v: list[str]) -> dict[str, int]:
        """Creates per session counted at the fake cloud: at most one each, however the
        pods ended. Returns session id → creates."""
        by_name = state.get("creates_by_name", {})
        creates = {t.id: int(by_name.get(f"{PREFIX}{t.id}", 0)) for t in self.tracks if t.id}
        for sid, n in creates.items():
            if n > 1:
                v.append(f"session {sid}: {n} pods created (at most one per session)")
        return creates

    def check_visible_ends(self, v: list[str], timeout: float = 5.0) -> int:
        """Every session's end is visible to its caller: ``wait()`` answers at once with
        the compute (running) or an ``AtlasError`` (failed/terminated), never by running
        into its timeout. Returns how many were not."""

        def one(t: Track) -> str | None:
            assert t.id is not None and t.pod_name is not None
            session = orchestrator.Session(t.id, "runpod", t.pod_name, t.auth)
            started = time.monotonic()
            try:
                session.wait(timeout=timeout)
                outcome = "running"
            except AtlasTimeoutError as exc:
                if time.monotonic() - started >= timeout - 0.5:
                    return (
                        f"session {t.id}: wait() timed out (status "
                        f"{t.record.get('status')}): its end is not visible"
                    )
                outcome = f"AtlasError {exc.kind}"
            except AtlasError as exc:
                outcome = f"AtlasError {exc.kind}"
            except Exception as exc:
                return f"session {t.id}: wait() raised a raw {type(exc).__name__}"
            # wait() waits for *running*: a session that ran (even if it ended since)
            # gives its compute; one that never ran must raise its AtlasError
            ran = bool(t.record.get("running_at_ms"))
            if ran != (outcome == "running"):
                return (
                    f"session {t.id} ({t.record.get('status')}, "
                    f"{'ran' if ran else 'never ran'}) but wait() gave {outcome}"
                )
            return None

        tracks = [t for t in self.tracks if t.id]
        with ThreadPoolExecutor(16, thread_name_prefix="chaos-wait") as pool:
            problems = [p for p in pool.map(one, tracks) if p]
        v.extend(problems)
        return len(problems)

    def check_sessions(self, v: list[str], r: redis.Redis) -> tuple[list[float], list[float]]:
        cfg = self.cfg
        bound_ms = cfg.reap_interval_ms + cfg.idle_slack_s * 1000
        late_end: list[float] = []
        late_decision: list[float] = []
        lost: list[str] = []
        slowest: list[tuple[float, float, str]] = []
        for t in self.tracks:
            if not t.id:
                continue
            rec = t.record
            status = rec.get("status")
            if status not in TERMINAL and t.id in self.lost:
                lost.append(
                    f"{t.id} (spawned at {t.spawned_at:.2f}s, "
                    f"spawn_attempts={rec.get('spawn_attempts', 0)})"
                )
                continue
            if status not in TERMINAL:
                fields = {k: rec.get(k) for k in ("spawn_attempts", "compute_id", "reason")}
                seen = [(e.get("type"), e.get("data", {}).get("status")) for e in _history(r, t.id)]
                v.append(
                    f"session {t.id} still {status} after the drain (spawned at "
                    f"{t.spawned_at:.2f}s, {fields}, events {seen})"
                )
                continue
            if status == "failed":
                continue  # spawn gave up: the pod check above covers its pod
            reason = rec.get("reason")
            running_at = int(rec.get("running_at_ms") or 0)
            term_at = int(rec.get("terminating_at_ms") or 0)
            ended_at = int(rec.get("ended_at_ms") or 0)
            if reason == "requested" and t.stopped:
                continue  # the driver stopped it: no idle bound applies
            if reason != "idle_timeout":
                v.append(f"session {t.id} terminated for {reason!r}")
                continue
            # no wrongful kill: the decision comes at least one TTL after the last touch
            last_ok = max(t.ok_touches, default=0)
            floor = max(last_ok, running_at) + t.ttl_ms
            if term_at < floor - cfg.clock_slack_ms:
                v.append(
                    f"session {t.id} terminated {(floor - term_at) / 1000:.3f}s before "
                    f"its idle deadline (ttl {t.ttl_ms} ms, last touch {last_ok})"
                )
            # every idle session ends within ttl + reap interval + slack
            maybe = max(t.maybe_touches, default=0)
            ceiling = max(max(t.ok_after, default=0), running_at, maybe) + t.ttl_ms
            if not maybe:  # exact deadline known: report the real latency
                late_decision.append((term_at - ceiling) / 1000)
                late_end.append((ended_at - ceiling) / 1000)
                slowest.append(((ended_at - ceiling) / 1000, ceiling / 1000 - self.t0_wall, t.id))
            if ended_at - ceiling > bound_ms:
                v.append(
                    f"session {t.id} ended {(ended_at - ceiling) / 1000:.1f}s after its "
                    f"idle deadline (bound {bound_ms / 1000:.0f}s)"
                )
            # the orphan reaper never kills a pod while its session tracks it
            for e in _history(r, t.id):
                if e.get("type") == "terminating" and e.get("data", {}).get("reason") == "orphan":
                    ts = float(e.get("ts", 0)) * 1000
                    if running_at and running_at <= ts < term_at:
                        v.append(f"orphan reaper killed tracked session {t.id}'s pod")
        if late_end:
            p95 = sorted(late_end)[min(len(late_end) - 1, int(0.95 * len(late_end)))]
            if p95 > cfg.idle_p95_bound_s:
                v.append(
                    f"p95 of idle sessions' termination is {p95:.1f}s after their "
                    f"deadline (bound {cfg.idle_p95_bound_s:g}s): the common path is slow"
                )
        top = sorted(slowest, reverse=True)[:5]
        self.notes.append(
            "slowest idle terminations (late s @ deadline offset s, id): "
            + ", ".join(f"{late:.1f} @ {at:.1f} {sid}" for late, at, sid in top)
        )
        if lost:
            text = (
                f"{len(lost)} spawn message(s) lost by the broker, sessions stuck in "
                f"spawning until their intent expires: {lost}"
            )
            if cfg.lost_spawn_is_violation:
                v.append(text)
            else:
                self.notes.append(text)
        return late_end, late_decision

    def check_secrets(self, cluster: LocalCluster, v: list[str]) -> None:
        dump = dump_redis(cluster.redis_url)
        wanted = {
            "per-call api key": self.per_call_key,
            "cloud api key": cluster.cloud.api_key,
            "ATLAS_SECRET_KEY": cluster.env["ATLAS_SECRET_KEY"],
        }
        for t in self.tracks:
            for i, secret in enumerate(t.secrets):
                wanted[f"session {t.id} secret {i}"] = secret
        self.counts["secrets_searched"] = len(wanted)
        for what, secret in wanted.items():
            if secret.encode() in dump:
                v.append(f"raw secret in Redis: {what}")


def _history(r: redis.Redis, sid: str) -> list[dict[str, Any]]:
    out = []
    entries = cast(list[tuple[str, dict[str, str]]], r.xrange(f"atlas:events-log:{sid}"))
    for _, fields in entries:
        try:
            out.append(json.loads(fields["e"]))
        except (KeyError, ValueError):
            continue
    return out


_RETRY_PATTERNS = {
    "spawn task": re.compile(r"spawn \S+ attempt \d+ failed .*retrying"),
    "terminate task": re.compile(r"terminate \S+ attempt \d+ failed .*retrying"),
    "terminate split from a batch": re.compile(r"terminate \S+ in a batch failed"),
    "create re-tried after lookup": re.compile(r"create of .* no pod exists; retrying"),
    "create adopted after 500": re.compile(r"create of .* but the pod exists"),
    "spawn adopted by name": re.compile(r"adopting pod .* found by name"),
    "terminate gave up": re.compile(r"terminate \S+ gave up"),
    "spawn failed": re.compile(r"spawn \S+ failed: "),
    "tracebacks": re.compile(r"^Traceback", re.MULTILINE),
}


def _first_fatal(logs: str) -> str:
    match = re.search(r"(CRITICAL|ERROR)/MainProcess\] (Unrecoverable error: .*)", logs)
    return match.group(2)[:200] if match else "none logged"


def _retry_counts(logs: str) -> dict[str, int]:
    return {name: len(p.findall(logs)) for name, p in _RETRY_PATTERNS.items()}


def run_chaos(cfg: ChaosConfig | None = None) -> ChaosReport:
    """Run one chaos scenario on a fresh local cluster and return its report."""
    return ChaosRun(cfg or ChaosConfig.ci()).run()


def config_from_env() -> ChaosConfig:
    """``ATLAS_CHAOS=long`` → :meth:`ChaosConfig.long`, anything else → CI mode."""
    return ChaosConfig.long() if os.environ.get("ATLAS_CHAOS") == "long" else ChaosConfig.ci()


if __name__ == "__main__":  # python -m tests.support.chaos
    result = run_chaos(config_from_env())
    print(result.format())  # noqa: T201 - a CLI
    raise SystemExit(1 if result.violations else 0)
