"""Scale proof (issue 17): 100,000 tracked sessions, touches at 3,000/s from 4 processes
for 60 s while 1,000 other sessions go idle and are reaped by the real reaper.

One :class:`LocalCluster` (its private ``redis-server`` as :class:`RedisServer` runs it:
the shipped config; fake cloud; one real Celery worker at the settings' default pool,
threads/128, with the keyspace-expiry listener; beat running every default schedule).
Phases, in order:

1. **Fill**: ``N - IDLE`` running sessions through the real store code paths,
   ``SessionStore.create`` then ``finish_spawn`` (the record, its intent, its user index
   entry, the idle clock, the deadline and meter index entries, the ``running`` event),
   from several processes. Each gets a real public compute dict (made once by the RunPod
   provider against the fake cloud, as ``bench_memory`` does) with its own pod id and an
   idle TTL of one hour, so none of them goes idle during the run. Memory per session is
   the ``used_memory`` delta over the fill (after a short settle) / sessions filled.
2. **Baseline window** (before the worker starts): the same load shape, ``PROCS``
   processes together at ``RATE`` calls/s paced by a schedule, for ``SECONDS``, but each
   call is a raw ``PEXPIRE`` of a random one of ``N`` plain keys, on the same kind of
   client (``get_redis()``).
3. **Touch window**: worker + beat start; the same processes call the public
   ``atlas_tasks.client.touch`` on random filled sessions while this process creates
   ``IDLE`` more sessions (``create`` + ``finish_spawn``, each with a real pod at the fake
   cloud) whose idle TTLs put their deadlines evenly over the middle of the window. They
   are never touched; the real idle path (Redis expiry -> listener or sweep ->
   ``terminate_batch`` -> provider DELETE -> ``finish_terminate``) must end them.

Figures: touch p50/p99 (per-call service time, all samples of all processes merged) with
the PEXPIRE baseline's as ratios; the achieved rate; idle-reap lag per session =
``ended_at_ms - (last_activity_ms + idle_ttl_ms)`` from the record (Redis time on both
sides); Redis CPU (``used_cpu_sys + used_cpu_user`` delta / wall, summed over nodes) in
both windows; bytes per session and total ``used_memory``.

Sizes come from the environment so a small run is quick: ``ATLAS_BENCH_SCALE_N``
(100000), ``_IDLE`` (1000), ``_SECONDS`` (60), ``_RATE`` (3000, total calls/s),
``_PROCS`` (4), ``_FILLERS`` (3 fill processes). ``--quick``: 5,000 / 200 / 10 s / 300/s.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import random
import re
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import unquote, urlsplit

import redis

from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.tasks.reaper import SWEEP_STATS_KEY
from atlas_tasks.testing.localstack import LocalCluster
from bench.common import Report, distribution, group_cpu_seconds

NAME = "scale"
IMAGE = "ghcr.io/acme/infer:latest"
#: The worker pool the settings default to (LocalCluster's own default is 32).
CONCURRENCY = AtlasSettings.model_fields["worker_concurrency"].default
#: Idle TTL of the touched sessions: far beyond the run, so only the idle set ends.
LONG_TTL_MS = 3600 * 1000
#: Distinct user ids over the filled sessions (each session is in its user's index).
USERS = 10_000
PLAIN_PREFIX = "bench:scale:plain:"
#: In the touch window, a raw PEXPIRE probe after every this many touches (the
#: same-window baseline: same worker, beat and meter load as the touches).
PROBE_EVERY = 10
#: The spawn context: children must not inherit this process's threads (fake cloud).
_MP = mp.get_context("spawn")


@dataclass
class Params:
    """Sizes of one run (see the module docstring for the environment variables)."""

    sessions: int
    idle: int
    seconds: float
    rate: float
    procs: int
    fillers: int

    @classmethod
    def from_env(cls, quick: bool) -> Params:
        """Defaults (full or quick) overridden by ``ATLAS_BENCH_SCALE_*``."""
        base = (
            cls(5_000, 200, 10.0, 300.0, 4, 2)
            if quick
            else cls(100_000, 1_000, 60.0, 3_000.0, 4, 3)
        )

        def env(name: str, default: float) -> float:
            raw = os.environ.get(f"ATLAS_BENCH_SCALE_{name}")
            return float(raw) if raw else default

        params = cls(
            sessions=int(env("N", base.sessions)),
            idle=int(env("IDLE", base.idle)),
            seconds=env("SECONDS", base.seconds),
            rate=env("RATE", base.rate),
            procs=int(env("PROCS", base.procs)),
            fillers=int(env("FILLERS", base.fillers)),
        )
        if params.idle >= params.sessions or params.idle < 1 or params.procs < 1:
            raise ValueError(f"bad scale sizes: {params}")
        return params

    @property
    def touched(self) -> int:
        """Sessions the load touches (the rest are the idle set)."""
        return self.sessions - self.idle


def touched_id(i: int) -> str:
    """Id of the ``i``-th filled (touched) session."""
    return f"a{i:015x}"


def idle_id(i: int) -> str:
    """Id of the ``i``-th idle session."""
    return f"e{i:015x}"


def _record(sid: str, ttl_ms: int, user: int | None) -> SessionRecord:
    return SessionRecord(
        id=sid,
        provider="runpod",
        status=SessionStatus.SPAWNING,
        pod_name=f"atlas-{sid}",
        idle_ttl_ms=ttl_ms,
        auth="none",
        user_id=user,
        base_url="",
        gpu="h100",
        image=IMAGE,
    )


# --------------------------------------------------------------------------- child processes


def _fill_worker(first: int, stop: int, template_json: str, template_id: str, done: Any) -> None:
    """Child: create + finish_spawn the touched sessions ``first..stop-1``."""
    from atlas_tasks.redis_conn import get_redis
    from atlas_tasks.sessions.store import store_for

    store = store_for(get_redis())
    width = len(template_id)
    step = 0
    for i in range(first, stop):
        sid = touched_id(i)
        pod_id = f"{i:0{width}x}"[-width:]
        store.create(_record(sid, LONG_TTL_MS, i % USERS))
        compute = json.loads(template_json.replace(template_id, pod_id))
        status = store.finish_spawn(sid, pod_id, compute)
        if status != "running":
            raise RuntimeError(f"session {sid}: finish_spawn answered {status!r}")
        step += 1
        if step == 250:
            with done.get_lock():
                done.value += step
            step = 0
    with done.get_lock():
        done.value += step


def _load_worker(
    kind: str,
    keys: int,
    rate: float,
    seconds: float,
    start_at: float,
    seed: int,
    conn: Connection,
) -> None:
    """Child: ``rate`` calls/s for ``seconds`` from wall time ``start_at``, paced by a
    schedule (call k is due at start + k/rate; a late call goes at once, never skipped).

    ``kind`` is ``touch`` (``atlas_tasks.client.touch`` on a random touched session) or
    ``pexpire`` (raw ``PEXPIRE`` of a random plain key). Sends back per-call service time
    and time since the call was due (both seconds, as ``array('d')`` bytes), the number of
    calls and errors by type.
    """
    from atlas_tasks import client
    from atlas_tasks.redis_conn import get_redis

    r = get_redis()
    rng = random.Random(seed)
    call: Callable[[int], Any]
    if kind == "touch":

        def call(i: int) -> Any:
            return client.touch(touched_id(i))
    else:

        def call(i: int) -> Any:
            return r.pexpire(f"{PLAIN_PREFIX}{i}", LONG_TTL_MS)

    for _ in range(20):  # warm-up: connection, script cache
        call(rng.randrange(keys))
    # With touches, one scheduled slot in PROBE_EVERY + 1 is a raw PEXPIRE of a plain key
    # instead (on top of the touch rate): the same-window baseline, under the same
    # background (worker, beat, meter, reaper) and the same pacing as the touches.
    probe = kind == "touch"
    slots = PROBE_EVERY + 1 if probe else 1
    total = int(rate * seconds) * slots // max(1, slots - 1) if probe else int(rate * seconds)
    interval = seconds / total
    t0 = time.perf_counter() + (start_at - time.time())
    hard_stop = t0 + seconds + max(5.0, seconds * 0.25)
    service, since_due, probes = array("d"), array("d"), array("d")
    errors: dict[str, int] = {}
    while (now := time.perf_counter()) < t0:
        time.sleep(min(0.05, t0 - now))
    k = calls = 0
    while k < total:
        due = t0 + k * interval
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        elif now > hard_stop:
            break  # far behind schedule: report the calls made, not a longer window
        i = rng.randrange(keys)
        is_probe = probe and k % slots == slots - 1
        started = time.perf_counter()
        try:
            if is_probe:
                r.pexpire(f"{PLAIN_PREFIX}{i}", LONG_TTL_MS)
            else:
                call(i)
        except Exception as exc:  # counted and reported; the load goes on
            name = ("probe " if is_probe else "") + type(exc).__name__
            errors[name] = errors.get(name, 0) + 1
        ended = time.perf_counter()
        if is_probe:
            probes.append(ended - started)
        else:
            service.append(ended - started)
            since_due.append(ended - due)
            calls += 1
        k += 1
    elapsed = time.perf_counter() - t0
    conn.send(
        {
            "calls": calls,
            "elapsed": elapsed,
            "errors": errors,
            "service": service.tobytes(),
            "since_due": since_due.tobytes(),
            "probes": probes.tobytes(),
        }
    )
    conn.close()


# --------------------------------------------------------------------------- redis stats


def node_clients(url: str) -> list[redis.Redis]:
    """Plain clients on every node behind ``url`` (one for a plain Redis URL, one per
    host of a ``redis+cluster://`` URL), for per-node ``INFO``."""
    if url.startswith(C.CLUSTER_URL_SCHEME):
        rest = url[len(C.CLUSTER_URL_SCHEME) :]
        auth, _, hosts = rest.rpartition("@")
        raw = urlsplit(f"redis://{auth}@x").password if auth else None
        password = unquote(raw) if raw else None
        out = []
        for hostport in hosts.split("/")[0].split(","):
            host, _, port = hostport.rpartition(":")
            out.append(redis.Redis(host=host, port=int(port), password=password))
        return out
    return [redis.Redis.from_url(url)]


def redis_cpu_seconds(nodes: list[redis.Redis]) -> float:
    """``used_cpu_sys + used_cpu_user`` summed over ``nodes``."""
    total = 0.0
    for node in nodes:
        info = node.info("cpu")
        total += float(info["used_cpu_sys"]) + float(info["used_cpu_user"])
    return total


def command_stats(nodes: list[redis.Redis]) -> dict[str, tuple[int, int]]:
    """``INFO commandstats`` summed over ``nodes``: command -> (calls, usec)."""
    out: dict[str, tuple[int, int]] = {}
    for node in nodes:
        for key, row in node.info("commandstats").items():
            name = key.removeprefix("cmdstat_")
            calls, usec = out.get(name, (0, 0))
            out[name] = (calls + int(row["calls"]), usec + int(row["usec"]))
    return out


def command_stats_delta(
    before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]], top: int = 10
) -> list[dict[str, Any]]:
    """The ``top`` commands by Redis time between two :func:`command_stats` readings
    (script-internal calls are counted under their own command too)."""
    rows: list[dict[str, Any]] = []
    for name, (calls, usec) in after.items():
        c0, u0 = before.get(name, (0, 0))
        if calls - c0 > 0:
            rows.append({"command": name, "calls": calls - c0, "usec": usec - u0})
    rows.sort(key=lambda row: -row["usec"])
    return rows[:top]


def redis_used_memory(nodes: list[redis.Redis], settle_s: float = 0.5) -> int:
    """``used_memory`` summed over ``nodes``, after ``settle_s`` (clientsCron shrinks the
    query/reply buffers a big load leaves behind, as ``bench_memory`` does)."""
    time.sleep(settle_s)
    return sum(int(node.info("memory")["used_memory"]) for node in nodes)


# --------------------------------------------------------------------------- phases


def redis_diagnostics(node: redis.Redis) -> dict[str, Any]:
    """What one node says about expiry and stalls: keys and volatile keys, expiry
    counters, the slow log (commands over 10 ms since the fill) and latency events."""
    stats = node.info("stats")
    slow = node.slowlog_get(20)
    return {
        "keyspace": node.info("keyspace"),
        "expiry": {
            k: stats.get(k)
            for k in (
                "expired_keys",
                "expired_stale_perc",
                "expired_time_cap_reached_count",
                "expire_cycle_cpu_milliseconds",
            )
        },
        "slowlog": [
            {
                "us": entry["duration"],
                "command": (
                    entry["command"].decode(errors="replace")
                    if isinstance(entry["command"], bytes)
                    else str(entry["command"])
                )[:120],
            }
            for entry in slow
        ],
        "latency_latest": [[str(x) for x in row] for row in node.execute_command("LATENCY LATEST")],
    }


def _fill(params: Params, template_json: str, template_id: str) -> float:
    """Fill the touched sessions from ``params.fillers`` processes; returns seconds."""
    done = _MP.Value("q", 0)
    count = params.touched
    per = math.ceil(count / params.fillers)
    procs = [
        _MP.Process(
            target=_fill_worker,
            args=(k * per, min(count, (k + 1) * per), template_json, template_id, done),
        )
        for k in range(params.fillers)
        if k * per < count
    ]
    started = time.monotonic()
    for p in procs:
        p.start()
    last_print = started
    while any(p.is_alive() for p in procs):
        time.sleep(0.5)
        now = time.monotonic()
        if now - last_print >= 5.0:
            last_print = now
            value = int(done.value)
            print(
                f"  [scale] filled {value:,}/{count:,} sessions ({value / (now - started):,.0f}/s)",
                flush=True,
            )
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"fill process exited with {p.exitcode}")
    if int(done.value) != count:
        raise RuntimeError(f"filled {done.value} of {count} sessions")
    seconds = time.monotonic() - started
    print(f"  [scale] filled {count:,} sessions in {seconds:.1f}s", flush=True)
    return seconds


def _start_load(kind: str, keys: int, params: Params, start_at: float) -> list[Any]:
    handles = []
    for k in range(params.procs):
        parent, child = _MP.Pipe(duplex=False)
        proc = _MP.Process(
            target=_load_worker,
            args=(
                kind,
                keys,
                params.rate / params.procs,
                params.seconds,
                start_at,
                1000 + k,
                child,
            ),
        )
        proc.start()
        child.close()
        handles.append((proc, parent))
    return handles


def _collect_load(handles: list[Any]) -> dict[str, Any]:
    service: list[float] = []
    since_due: list[float] = []
    probes: list[float] = []
    calls, elapsed = 0, 0.0
    errors: dict[str, int] = {}
    for proc, conn in handles:
        out = conn.recv()
        proc.join()
        calls += out["calls"]
        elapsed = max(elapsed, out["elapsed"])
        for name, count in out["errors"].items():
            errors[name] = errors.get(name, 0) + count
        service.extend(array("d", out["service"]))
        since_due.extend(array("d", out["since_due"]))
        probes.extend(array("d", out["probes"]))
    return {
        "probe_pexpire_us": (
            {k: v * 1e6 for k, v in distribution(probes).items() if k != "count"} if probes else {}
        ),
        "calls": calls,
        "elapsed_s": elapsed,
        "rate": calls / elapsed if elapsed else 0.0,
        "errors": errors,
        "service_us": {k: v * 1e6 for k, v in distribution(service).items() if k != "count"},
        "since_due_us": {k: v * 1e6 for k, v in distribution(since_due).items() if k != "count"},
    }


def _window(
    kind: str,
    keys: int,
    params: Params,
    nodes: list[redis.Redis],
    during: Callable[[float], Any] | None = None,
) -> tuple[dict[str, Any], Any]:
    """One load window; ``during(start_at)`` runs in this process while the load runs."""
    start_at = time.time() + 3.0  # every child imported and warmed up by then
    handles = _start_load(kind, keys, params, start_at)
    time.sleep(max(0.0, start_at - time.time()))
    cpu0, wall0 = redis_cpu_seconds(nodes), time.monotonic()
    stats0 = command_stats(nodes)
    extra = during(start_at) if during else None
    result = _collect_load(handles)
    wall = time.monotonic() - wall0
    result["redis_cpu_s"] = redis_cpu_seconds(nodes) - cpu0
    result["redis_commands_top"] = command_stats_delta(stats0, command_stats(nodes))
    result["wall_s"] = wall
    result["redis_cpu_fraction"] = result["redis_cpu_s"] / wall
    return result, extra


def _arm_idle(cluster: LocalCluster, store: Any, params: Params, start_at: float) -> dict[str, str]:
    """Create the idle sessions, each with a real pod at the fake cloud, their deadlines
    spread evenly over the middle of the window; returns session id -> pod id."""
    state = cluster.cloud.ctx.state
    lead_ms = max(2000.0, params.seconds * 150)  # 15 % into the window
    spread_ms = max(1000.0, params.seconds * 500)  # over half the window
    armed_at = time.time() * 1000
    pods: dict[str, str] = {}
    for i in range(params.idle):
        sid = idle_id(i)
        pod = state.create_pod({"name": f"atlas-{sid}", "image": IMAGE}, boot_delay_s=0.0)
        target = start_at * 1000 + lead_ms + i * spread_ms / params.idle
        ttl = max(100, int(target - time.time() * 1000))
        store.create(_record(sid, ttl, None))
        status = store.finish_spawn(sid, pod.id, {"id": pod.id, "status": "running"})
        if status != "running":
            raise RuntimeError(f"idle session {sid}: finish_spawn answered {status!r}")
        pods[sid] = pod.id
    print(
        f"  [scale] armed {params.idle} idle sessions in {time.time() - armed_at / 1000:.2f}s",
        flush=True,
    )
    return pods


def _reap_lags(store: Any, ids: list[str]) -> tuple[list[float], dict[str, int]]:
    """Per ended session ``ended_at_ms - (last_activity_ms + idle_ttl_ms)`` in seconds,
    and the statuses of all ``ids``."""
    lags: list[float] = []
    statuses: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        rows = store.get_fields(chunk, "status", "ended_at_ms", "last_activity_ms", "idle_ttl_ms")
        for row in rows:
            status = "missing" if row is None or row.status is None else str(row.status)
            statuses[status] = statuses.get(status, 0) + 1
            if row is not None and row.status == SessionStatus.TERMINATED and row.ended_at_ms:
                deadline = (row.last_activity_ms or 0) + row.idle_ttl_ms
                lags.append((row.ended_at_ms - deadline) / 1000)
    return lags, statuses


def _deadlines(store: Any, ids: list[str]) -> dict[str, int]:
    """Idle deadline (Redis ms) of each session: ``last_activity_ms + idle_ttl_ms``."""
    out: dict[str, int] = {}
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        for sid, row in zip(
            chunk, store.get_fields(chunk, "last_activity_ms", "idle_ttl_ms"), strict=True
        ):
            if row is not None and row.last_activity_ms:
                out[sid] = row.last_activity_ms + row.idle_ttl_ms
    return out


def _watch_expiries(
    node: redis.Redis, alive_keys: dict[bytes, str], seen: dict[str, float], stop: threading.Event
) -> None:
    """Thread: when Redis announced the expiry of each key of ``alive_keys`` (alive key
    -> session id) on ``node`` (``__keyevent@0__:expired``), in wall ms."""
    pubsub = node.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("__keyevent@0__:expired")
    while not stop.is_set():
        message = pubsub.get_message(timeout=0.2)
        if message and message["data"] in alive_keys:
            seen[alive_keys[message["data"]]] = time.time() * 1000
    pubsub.close()


def _wait_reaped(store: Any, ids: list[str], timeout_s: float) -> float:
    """Wait until every idle session is terminated (or ``timeout_s``); returns seconds."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        _, statuses = _reap_lags(store, ids)
        if statuses.get("terminated", 0) == len(ids):
            break
        time.sleep(0.5)
    return time.monotonic() - started


def measure(
    params: Params,
    *,
    registry_url: str | None = None,
    node_urls: str | None = None,
    **cluster_settings: Any,
) -> dict[str, Any]:
    """Run the three phases on a fresh deployment; returns the raw figures.

    ``registry_url`` (a Redis Cluster) replaces the private Redis for the registry;
    ``cluster_settings`` go to :class:`LocalCluster` (``broker_url=...``).
    ``node_urls`` is where per-node INFO is read (default: the registry's URL).
    """
    from atlas_tasks.redis_conn import get_redis
    from atlas_tasks.sessions.store import store_for
    from bench.bench_memory import _template_compute

    template, template_id = _template_compute()
    template_json = json.dumps(template)
    out: dict[str, Any] = {"params": asdict(params)}
    with LocalCluster(
        redis_url=registry_url, workers=0, beat=False, concurrency=CONCURRENCY, **cluster_settings
    ) as cluster:
        nodes = node_clients(node_urls or cluster.redis_url)
        for node in nodes:
            # The slow log keeps the arguments of slow commands (bench_memory does the
            # same): on a busy machine it would be charged to the sessions.
            node.config_set("slowlog-max-len", 0)
        r = get_redis()
        store = store_for(r)
        before = redis_used_memory(nodes)
        out["fill_s"] = _fill(params, template_json, template_id)
        after = redis_used_memory(nodes)
        out["used_memory_before_fill"] = before
        out["used_memory_after_fill"] = after
        out["bytes_per_session"] = (after - before) / params.touched
        out["tracked_after_fill"] = len(store.list_ids())
        for node in nodes:
            # From here on, Redis-side stalls are recorded for the details: commands over
            # 10 ms (slow log) and latency events over 20 ms (latency monitor).
            node.config_set("slowlog-max-len", 128)
            node.config_set("slowlog-log-slower-than", 10_000)
            node.config_set("latency-monitor-threshold", 20)
            node.slowlog_reset()

        # Baseline: plain keys, then the same load shape as raw PEXPIREs.
        for start in range(0, params.sessions, 1000):
            with r.pipeline(transaction=False) as pipe:
                for i in range(start, min(params.sessions, start + 1000)):
                    pipe.set(f"{PLAIN_PREFIX}{i}", "1", px=LONG_TTL_MS)
                pipe.execute()
        print(f"  [scale] baseline window: PEXPIRE, {params.seconds:g}s", flush=True)
        out["baseline"], _ = _window("pexpire", params.sessions, params, nodes)

        # The real deployment around the registry: worker (listener) + beat.
        cluster.add_worker()
        cluster.start_beat_process()
        worker_pid = cluster.workers[0].pid
        worker_cpu0 = group_cpu_seconds(worker_pid)
        print(
            f"  [scale] touch window: {params.rate:g}/s from {params.procs} processes, "
            f"{params.seconds:g}s, {params.idle} sessions going idle",
            flush=True,
        )
        expired_at: dict[str, float] = {}
        alive_keys = {store.keys(idle_id(i)).alive.encode(): idle_id(i) for i in range(params.idle)}
        stop_watch = threading.Event()
        watchers = [
            threading.Thread(
                target=_watch_expiries,
                args=(node, alive_keys, expired_at, stop_watch),
                daemon=True,
            )
            for node in nodes
        ]
        for thread in watchers:
            thread.start()
        out["touch"], pods = _window(
            "touch",
            params.touched,
            params,
            nodes,
            during=lambda start_at: _arm_idle(cluster, store, params, start_at),
        )
        out["worker_cpu_s_window"] = group_cpu_seconds(worker_pid) - worker_cpu0
        out["used_memory_after_window"] = redis_used_memory(nodes, settle_s=0.0)
        ids = list(pods)
        out["reap_wait_after_window_s"] = _wait_reaped(store, ids, 60.0 + params.seconds)
        lags, statuses = _reap_lags(store, ids)
        out["idle_statuses"] = statuses
        out["reap_lag_s"] = distribution(lags) if lags else {}
        out["reaped"] = len(lags)
        with cluster.cloud.ctx.state.lock:
            out["pods_deleted"] = sum(
                1
                for pid in pods.values()
                if cluster.cloud.ctx.state.pods[pid].desired_status == "TERMINATED"
            )
        out["touched_still_running"] = _sample_running(store, params)
        stop_watch.set()
        for thread in watchers:
            thread.join(5)
        notices = [
            (expired_at[sid] - deadline) / 1000
            for sid, deadline in _deadlines(store, ids).items()
            if sid in expired_at
        ]
        out["expiry_notice_lag_s"] = distribution(notices) if notices else {}
        sweep_stats = r.hgetall(keyspace().key(SWEEP_STATS_KEY))
        out["reaper_sweep_stats"] = sweep_stats
        out["claimed_by_sweeps"] = int(sweep_stats.get("due") or 0)
        out["worker_tasks"] = task_summary(cluster.workers[0].log())
        out["redis_diagnostics"] = [redis_diagnostics(node) for node in nodes]
        if len(lags) < params.idle:
            out["cluster_log_tail"] = cluster.logs()[-4000:]
        out["used_memory_end"] = redis_used_memory(nodes, settle_s=0.0)
    return out


def task_summary(log: str) -> dict[str, dict[str, float]]:
    """Per task name, from a worker's INFO log: how many succeeded, their total and
    longest run time (s), and how many failed or raised."""
    out: dict[str, dict[str, float]] = {}
    for match in re.finditer(
        r"Task ([\w.]+)\[[^\]]*\] (succeeded in ([\d.]+)s|raised|failed)", log
    ):
        row = out.setdefault(match[1], {"succeeded": 0, "seconds": 0.0, "max_s": 0.0, "bad": 0})
        if match[3] is None:
            row["bad"] += 1
            continue
        row["succeeded"] += 1
        row["seconds"] = round(row["seconds"] + float(match[3]), 3)
        row["max_s"] = max(row["max_s"], float(match[3]))
    return out


def _sample_running(store: Any, params: Params) -> dict[str, int]:
    """Statuses of 1,000 random touched sessions at the end (none may have ended)."""
    rng = random.Random(3)
    ids = [touched_id(rng.randrange(params.touched)) for _ in range(1000)]
    statuses: dict[str, int] = {}
    for row in store.get_fields(ids, "status"):
        status = "missing" if row is None or row.status is None else str(row.status)
        statuses[status] = statuses.get(status, 0) + 1
    return statuses


def report_from(name: str, m: dict[str, Any], label: str) -> Report:
    """The figures of one :func:`measure` result."""
    report = Report(name)
    p = Params(**m["params"])
    touch, base = m["touch"], m["baseline"]
    for q in ("p50", "p99"):
        report.add(
            f"touch() {q}, {p.rate:g}/s from {p.procs} processes, {p.sessions:,} tracked{label}",
            touch["service_us"][q],
            "us",
            baseline=base["service_us"][q],
            baseline_label=f"PEXPIRE {q}, same load, before the worker started",
            note=f"{touch['calls']:,} touches; errors {touch['errors'] or 'none'}"
            if q == "p50"
            else f"from schedule (queueing included): {touch['since_due_us'][q]:.0f} us",
        )
    probe = touch.get("probe_pexpire_us") or {}
    for q in ("p50", "p99"):
        if q in probe:
            report.add(
                f"touch() {q}, same window as a PEXPIRE probe (worker, beat, meter running)",
                touch["service_us"][q],
                "us",
                baseline=probe[q],
                baseline_label=f"PEXPIRE probe {q}, same window",
                note=f"one probe slot per {PROBE_EVERY} touches, paced like them",
            )
    report.add(
        "touch rate achieved",
        touch["rate"],
        "ops/s",
        baseline=base["rate"],
        baseline_label="PEXPIRE rate achieved",
        target=f">= {0.98 * p.rate:g}/s",
        ok=touch["rate"] >= 0.98 * p.rate,
    )
    lag = m["reap_lag_s"]
    reaped_ok = m["reaped"] == p.idle
    for q in ("p50", "p99", "max"):
        report.add(
            f"idle-reap lag {q} (ended_at - idle deadline)",
            lag.get(q, float("nan")),
            "s",
            baseline=m["expiry_notice_lag_s"].get(q),
            baseline_label="Redis expiry notice - deadline",
            ok=reaped_ok if q == "p99" else None,
            note=f"{m['reaped']}/{p.idle} reaped; statuses {m['idle_statuses']}; "
            f"{m['claimed_by_sweeps']} claimed by reaper sweeps, the rest by the listener"
            if q == "p99"
            else "",
        )
    report.add(
        "Redis CPU during touch window (fraction of one core)",
        touch["redis_cpu_fraction"],
        "x",
        baseline=base["redis_cpu_fraction"],
        baseline_label="during PEXPIRE window",
        ratio=touch["redis_cpu_fraction"] / base["redis_cpu_fraction"]
        if base["redis_cpu_fraction"]
        else None,
        note=f"worker CPU in the window {m['worker_cpu_s_window']:.1f}s",
    )
    report.add(
        f"Redis bytes per running session (fill of {p.touched:,})",
        m["bytes_per_session"],
        "B",
        note="used_memory delta over the fill / sessions",
    )
    report.add(
        "Redis used_memory after fill / after window",
        m["used_memory_after_fill"] / 2**20,
        "MB",
        note=f"after window {m['used_memory_after_window'] / 2**20:.1f} MB "
        "(incl. the plain baseline keys)",
    )
    report.details = m
    return report


def run(quick: bool = False) -> Report:
    """Run the scale benchmark on one private Redis."""
    m = measure(Params.from_env(quick))
    return report_from(NAME, m, "")
