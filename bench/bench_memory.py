"""Redis memory per tracked session (target ≤ 1 KB), with bench-only layout experiments.

N running sessions are made the way the system makes them, in a private ``redis-server``:
the caller side is the real ``orchestrator.spawn`` (record, write-ahead intent, the
``spawning`` event in the session's stream) with Celery's ``send_task`` swapped for a
no-op, so the broker queue is not counted; the worker side is what
``SessionService.spawn`` does after the provider answers: ``finish_spawn``, which also
writes the ``running`` event carrying the public compute. The compute is a real one,
created once on the fake cloud through the RunPod provider, with a distinct pod id per
session.

Figure: ``used_memory`` delta / N. Same-run baseline: N plain ``SET key 1`` keys, the
cheapest per-session footprint Redis can offer. A per-key breakdown (``MEMORY USAGE``)
goes to the details. Worker RSS is measured by ``bench_spawn_burst`` (at rest / burst).

The headline runs on the Redis settings atlas ships (``RedisServer``, docker-compose:
``stream-node-max-bytes 1024``, ``hash-max-listpack-value 1024``).

Experiments (none changes atlas code): the same fill under other Redis settings
(``CONFIG SET`` on the private server before the fill, e.g. a stock Redis), and
alternative layouts written directly over a fill: a
*compact record* (the ``compute`` JSON replaced by the short fields it adds to the
record, so every value fits the 64-byte listpack limit; the hash is written afresh, since
Redis never turns a hashtable back into a listpack, so this also stands for keeping the
spawning-time ``spawn_sealed`` payload out of the hash) and, on top, no per-session event
stream once the session runs (its replay log expired).
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Callable
from typing import Any

import redis

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.providers import get_provider
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sealing import generate_key
from atlas_tasks.sessions.service import public_compute
from atlas_tasks.sessions.store import SessionStore
from atlas_tasks.specs import build_compute_request
from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.localstack import RedisServer
from bench.common import Report, atlas_env, used_memory

NAME = "memory"
TARGET_BYTES = 1024
IMAGE = "ghcr.io/acme/infer:latest"
NODE = "stream-node-max-bytes"
HASH_VALUE = "hash-max-listpack-value"

#: One fill per Redis configuration: (label, CONFIG SET values). After each fill every
#: layout of LAYOUTS is measured in order (the rewrites build on each other).
PLAN: list[tuple[str, dict[str, str]]] = [
    # The first entry changes nothing: RedisServer's own settings, the ones shipped in
    # docker-compose.yml and recommended in the README. It is the headline figure.
    ("shipped config (stream-node-max-bytes 1024, hash-max-listpack-value 1024)", {}),
    (
        "stock Redis (stream-node-max-bytes 4096, hash-max-listpack-value 64)",
        {NODE: "4096", HASH_VALUE: "64"},
    ),
    ("shipped config but hash-max-listpack-value 64", {HASH_VALUE: "64"}),
    ("stream-node-max-bytes 512", {NODE: "512"}),
]
QUICK_PLAN = PLAN[:3]


def _template_compute() -> tuple[dict[str, Any], str]:
    """A real public compute dict (RunPod provider against the fake cloud) and its id."""
    with FakeCloud() as cloud:
        provider = get_provider("runpod", api_key=cloud.api_key, base_url=cloud.runpod_rest_url)
        request = build_compute_request(
            gpu="h100",
            image=IMAGE,
            ports=[(8000, "http")],
            auth="bearer",
            name="atlas-0123456789abcdef",
        )
        compute = provider.spawn_compute(request)
    return public_compute(compute), compute.id


def _pod_id(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(length))


def compact_fields(compute: dict[str, Any]) -> dict[str, str]:
    """What a compact record would keep of the compute, beyond the fields the record
    already has (compute_id, gpu, image, pod_name, auth, provider, status): short
    strings only; URLs are rebuilt on read (RunPod's proxy URL derives from pod id and
    port)."""
    ports = ",".join(f"{p['internal']}/{p['protocol']}" for p in compute.get("ports") or [])
    out = {
        "public_ip": compute.get("public_ip"),
        "ports": ports,
        "region": compute.get("region"),
        "cost_per_hour": compute.get("cost_per_hour"),
        "gpu_count": compute.get("gpu_count"),
    }
    return {k: str(v) for k, v in out.items() if v not in (None, "")}


def _settled_memory(r: redis.Redis) -> int:
    """``used_memory`` once Redis has had time to shrink client buffers (clientsCron): a
    big pipeline leaves query/reply buffers behind for a moment, which would otherwise be
    charged to the sessions."""
    time.sleep(0.3)
    return used_memory(r)


def _chunks(ids: list[str], size: int = 500) -> list[list[str]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _rewrite_compact(r: redis.Redis, all_ids: list[str]) -> None:
    """Rewrite each record without ``compute`` (plus its short fields), same TTL."""
    for ids in _chunks(all_ids):
        _rewrite_compact_chunk(r, ids)


def _rewrite_compact_chunk(r: redis.Redis, ids: list[str]) -> None:
    pipe = r.pipeline(transaction=False)
    for sid in ids:
        key = C.SESSION_KEY.format(id=sid)
        pipe.hgetall(key)
        pipe.pttl(key)
    fetched = pipe.execute()
    pipe = r.pipeline(transaction=False)
    for i, sid in enumerate(ids):
        record, pttl = fetched[2 * i], fetched[2 * i + 1]
        fields = {k: v for k, v in record.items() if k != "compute"}
        fields.update(compact_fields(json.loads(record["compute"])))
        key = C.SESSION_KEY.format(id=sid)
        pipe.delete(key)  # a fresh hash: HDEL would not turn a hashtable back to a listpack
        pipe.hset(key, mapping=fields)
        pipe.pexpire(key, max(1, int(pttl)))
    pipe.execute()


def _drop_streams(r: redis.Redis, all_ids: list[str]) -> None:
    for ids in _chunks(all_ids):
        r.delete(*[C.EVENTS_STREAM_KEY.format(id=sid) for sid in ids])


LAYOUTS: dict[str, Callable[[redis.Redis, list[str]], None] | None] = {
    "as is": None,
    "compact record": _rewrite_compact,
    "compact record, no stream": _drop_streams,
}


def _sample_keys(r: redis.Redis, sid: str) -> dict[str, Any]:
    record = C.SESSION_KEY.format(id=sid)
    stream = C.EVENTS_STREAM_KEY.format(id=sid)
    return {
        "record_bytes": r.memory_usage(record, samples=0),
        "record_encoding": r.object("encoding", record),
        "stream_bytes": r.memory_usage(stream, samples=0) if r.exists(stream) else 0,
    }


def run(quick: bool = False) -> Report:
    """Run the memory benchmark."""
    from atlas_tasks import orchestrator
    from atlas_tasks.celery_app import get_app

    report = Report(NAME)
    n = 2_000 if quick else 10_000
    template, template_id = _template_compute()
    template_json = json.dumps(template)
    rng = random.Random(7)
    server = RedisServer().start()
    sent: list[str] = []
    app: Any = None
    rows: list[dict[str, Any]] = []
    try:
        with atlas_env(ATLAS_REDIS_URL=server.url, ATLAS_SECRET_KEY=generate_key()):
            r = get_redis()
            reg = SessionStore(r)
            r.set("warm", "1")  # connection + a first key before the reference point
            # The slow log keeps the arguments of slow commands (the fill's pipelines on a
            # busy machine); it grows during the first fills and would be charged to them.
            r.config_set("slowlog-max-len", 0)
            defaults = {k: str(r.config_get(k)[k]) for k in (NODE, HASH_VALUE)}

            # Baseline: the smallest thing Redis can keep per session.
            before = _settled_memory(r)
            for chunk in _chunks([f"bench:plain:{i:016x}" for i in range(n)]):
                r.mset(dict.fromkeys(chunk, "1"))
            plain = (_settled_memory(r) - before) / n
            r.flushdb()

            # The caller side without a broker: get_app() is what orchestrator.spawn uses.
            app = get_app()
            app.send_task = lambda *a, **k: sent.append(str(a[0]))

            spawning: dict[str, Any] = {}

            def fill(count: int) -> list[str]:
                ids: list[str] = []
                for _ in range(count):
                    s = orchestrator.spawn(
                        provider="runpod",
                        gpu="h100",
                        image=IMAGE,
                        ports=[(8000, "http")],
                        auth="bearer",
                        user_id=123456,
                    )
                    if not spawning:  # the record while spawning, before finish_spawn
                        key = C.SESSION_KEY.format(id=s.id)
                        spawning.update(
                            {
                                "encoding": r.object("encoding", key),
                                "largest_fields_bytes": dict(
                                    sorted(
                                        ((k, len(v)) for k, v in r.hgetall(key).items()),
                                        key=lambda kv: -kv[1],
                                    )[:3]
                                ),
                            }
                        )
                    pod_id = _pod_id(rng, len(template_id))
                    compute = json.loads(template_json.replace(template_id, pod_id))
                    # finish_spawn records the pod and publishes the ``running`` event
                    # (with the compute) in one step, as SessionService.spawn relies on.
                    if reg.finish_spawn(s.id, pod_id, compute) != "running":
                        raise RuntimeError(f"session {s.id} did not reach running")
                    ids.append(s.id)
                if r.scard(C.SESSIONS_SET_KEY) != count:
                    raise RuntimeError("not every session was recorded")
                return ids

            # Warm-up pass, discarded: a fill and its rewrites leave ~200 KB behind in
            # Redis once (not keys; it stops growing after a pass), which would otherwise
            # be charged to the first configuration measured.
            warm = fill(min(n, 5_000))
            for rewrite in LAYOUTS.values():
                if rewrite is not None:
                    rewrite(r, warm)
            for config_label, config in QUICK_PLAN if quick else PLAN:
                r.flushdb()
                for key, value in {**defaults, **config}.items():
                    r.config_set(key, value)
                r.set("warm", "1")
                base = _settled_memory(r)
                ids = fill(n)
                sample = ids[n // 2]
                if not config:
                    report.details.update(_default_breakdown(r, sample, n))
                keys_per_session = r.dbsize() / n
                for layout, rewrite in LAYOUTS.items():
                    if rewrite is not None:
                        rewrite(r, ids)
                    rows.append(
                        {
                            "config": config_label,
                            "layout": layout,
                            "shipped": not config,
                            "bytes_per_session": round((_settled_memory(r) - base) / n),
                            "keys_per_session": round(keys_per_session, 3),
                            **_sample_keys(r, sample),
                        }
                    )
            for key, value in defaults.items():
                r.config_set(key, value)
    finally:
        if app is not None:
            app.__dict__.pop("send_task", None)  # drop the instance patch
        server.cleanup()
    report.details.update(
        {
            "sessions": n,
            "plain_key_bytes": round(plain),
            "record_while_spawning": spawning,
            "redis_defaults": defaults,
            "experiments": rows,
        }
    )
    by_config: dict[str, dict[str, int]] = {}
    for row in rows:
        by_config.setdefault(row["config"], {})[row["layout"]] = row["bytes_per_session"]
    for row in rows:
        layouts = by_config[row["config"]]
        # The stream's share from used_memory (MEMORY USAGE of a stream is approximate).
        row["stream_bytes_per_session"] = (
            layouts["compact record"] - layouts["compact record, no stream"]
        )
        current = row["layout"] == "as is" and row["shipped"]
        shown = row["layout"] != "compact record, no stream" or row["shipped"]
        if not shown:
            continue  # the rest (same record or no stream either way) is in the details
        name = (
            f"Redis bytes per running session (N={n:,}), current layout, shipped config"
            if current
            else f"{row['layout']}, {row['config']} (experiment)"
        )
        report.add(
            name,
            row["bytes_per_session"],
            "B",
            baseline=plain,
            baseline_label="plain SET key",
            target="<= 1024 B",
            ok=row["bytes_per_session"] <= TARGET_BYTES if current else None,
            note=(
                f"record {row['record_bytes']} B ({row['record_encoding']}), "
                f"stream {row['stream_bytes_per_session']} B/session"
                + ("" if current else "; not atlas behaviour, see RESULTS.md")
            ),
        )
    return report


def _default_breakdown(r: redis.Redis, sample: str, n: int) -> dict[str, Any]:
    """Where the bytes go in the current layout (one session's keys, index sizes / N)."""
    record = r.hgetall(C.SESSION_KEY.format(id=sample))
    return {
        "memory_usage_breakdown_bytes": {
            "record hash atlas:session:<id>": r.memory_usage(
                C.SESSION_KEY.format(id=sample), samples=0
            ),
            "idle clock atlas:alive:<id>": r.memory_usage(C.SESSION_ALIVE_KEY.format(id=sample)),
            "event stream atlas:events-log:<id> (compacted: empty)": r.memory_usage(
                C.EVENTS_STREAM_KEY.format(id=sample), samples=0
            ),
            "deadline zset / N": (r.memory_usage(C.DEADLINE_INDEX_KEY, samples=0) or 0) / n,
            "tracked set / N": (r.memory_usage(C.SESSIONS_SET_KEY, samples=0) or 0) / n,
        },
        "record_field_bytes": {
            k: len(k) + len(v) for k, v in sorted(record.items(), key=lambda kv: -len(kv[1]))
        },
        "compact_fields_example": compact_fields(json.loads(record["compute"])),
        # the replay log is compacted once running: the `running` event is rebuilt from
        # the record (events.history), the stream kept empty for its last id
        "running_event_payload_bytes": len(
            events.history(sample, client=r)[0].model_dump_json(exclude={"id"})
        ),
        "stream_entries": r.xlen(C.EVENTS_STREAM_KEY.format(id=sample)),
    }
