"""Reaper sweep cost with 1,000 vs 100,000 tracked sessions and the same 100 due.

Two databases of one private ``redis-server`` hold the two populations (written by a Lua
loop that mirrors the registry layout of :mod:`atlas_tasks.constants`: record hash with
its expiry, ``atlas:alive:<id>`` with its PX, the deadline zset, the tracked set). In
both, the same 100 sessions are past their deadline with no alive key. Sweeps on the two
databases alternate, and the 100 are made due again (untimed) before every sweep because
a sweep re-scores what it claims.

Timed: ``SessionStore.claim_due`` (the idle part of a sweep) and the whole
``SessionReaper.reap`` as the beat task calls it (stalled-spawn step included) with the orphan
scan off and enqueue callables that only count.
Target: time(100k) / time(1k) ≤ 1.5. Also the Redis commands one sweep makes.

Steady state: ``touch()`` no longer writes the deadline index, so a session that keeps
being touched comes due in the index once per idle TTL and the sweep re-scores it to its
live clock (``PTTL`` + ``ZADD`` + ``PEXPIRE``). With every session touched continuously
and the default 15-minute TTL, a 1 s sweep meets N / 900 of those: 1 at 1,000 tracked,
111 at 100,000. A third timed sweep adds them to the same 100 due.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings
from atlas_tasks.deps import Dependencies
from atlas_tasks.sessions import reaper
from atlas_tasks.sessions.store import SessionStore
from atlas_tasks.testing.localstack import RedisServer
from bench.common import Report, count_commands, median, redis_now_ms

NAME = "reaper"
TARGET = 1.5
DUE = 100
SMALL, LARGE = 1_000, 100_000

#: Writes ``count`` running sessions ``<prefix><i>`` in one server-side loop (fast: 100k
#: sessions in well under a second). ARGV: prefix, first, count, deadline_ms, ttl_ms,
#: record_ttl_ms, due_count (the first ``due_count`` get deadline now-1s and no alive key).
_POPULATE = """
local prefix, first, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local deadline, ttl, record_ttl = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local due = tonumber(ARGV[7])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = first, first + count - 1 do
  local id = prefix .. string.format('%012x', i)
  redis.call('HSET', 'atlas:session:' .. id, 'id', id, 'provider', 'runpod',
    'status', 'running', 'pod_name', 'atlas-' .. id, 'idle_ttl_ms', ttl, 'auth', 'bearer',
    'compute_id', 'pod' .. id, 'created_at_ms', now, 'last_activity_ms', now)
  redis.call('PEXPIRE', 'atlas:session:' .. id, record_ttl)
  redis.call('SADD', 'atlas:sessions', id)
  if i < due then
    redis.call('ZADD', 'atlas:deadlines', now - 1000, id)
  else
    redis.call('SET', 'atlas:alive:' .. id, ttl, 'PX', ttl)
    redis.call('ZADD', 'atlas:deadlines', deadline, id)
  end
end
return count
"""


def _populate(client: redis.Redis, total: int) -> list[str]:
    script = client.register_script(_POPULATE)
    ttl = C.DEFAULT_IDLE_TTL_MS
    deadline = redis_now_ms(client) + ttl
    chunk = 20_000  # keep each script call short: Redis serves nothing else meanwhile
    for first in range(0, total, chunk):
        script(
            args=[
                "s",
                first,
                min(chunk, total - first),
                deadline,
                ttl,
                ttl + C.SESSION_RECORD_GRACE_MS,
                DUE,
            ]
        )
    return [f"s{i:012x}" for i in range(DUE)]


def _touched(total: int) -> list[str]:
    """Ids of live sessions whose index entry comes due during one 1 s sweep interval
    when every session is touched continuously (N × 1 s / idle TTL)."""
    count = max(1, round(total * 1000 / C.DEFAULT_IDLE_TTL_MS))
    return [f"s{i:012x}" for i in range(DUE, DUE + count)]


def _make_due(client: redis.Redis, ids: list[str]) -> None:
    now = redis_now_ms(client)
    client.zadd(C.DEADLINE_INDEX_KEY, {sid: now - 1000 for sid in ids})


def run(quick: bool = False) -> Report:
    """Run the reaper benchmark."""
    report = Report(NAME)
    rounds = 10 if quick else 40
    server = RedisServer().start()
    try:
        urls = {
            SMALL: f"redis://127.0.0.1:{server.port}/0",
            LARGE: f"redis://127.0.0.1:{server.port}/1",
        }
        clients = {n: redis.Redis.from_url(u, decode_responses=True) for n, u in urls.items()}
        t0 = time.perf_counter()
        due_ids = {n: _populate(c, n) for n, c in clients.items()}
        report.details["populate_seconds"] = round(time.perf_counter() - t0, 2)
        report.details["tracked"] = {
            n: int(c.scard(C.SESSIONS_SET_KEY)) for n, c in clients.items()
        }
        regs = {n: SessionStore(c) for n, c in clients.items()}
        settings = {n: AtlasSettings(redis_url=u) for n, u in urls.items()}
        reapers = {
            n: reaper.SessionReaper(Dependencies.from_client(c, settings=settings[n]))
            for n, c in clients.items()
        }
        touched = {n: _touched(n) for n in clients}
        slack = C.IDLE_CLAIM_SLACK_MS
        enqueued: list[tuple[str, str]] = []
        orphans: list[Any] = []

        def enqueue_terminate(session_ids: list[str], reason: str) -> None:
            enqueued.extend((session_id, reason) for session_id in session_ids)

        def enqueue_orphan(provider: str, compute_id: str, pod_name: str | None) -> None:
            orphans.append((provider, compute_id, pod_name))

        def enqueue_spawn(session_id: str, sealed: str) -> None:
            raise RuntimeError(f"no spawn is stalled here, yet {session_id} was re-sent")

        def claim(n: int) -> int:
            return len(regs[n].claim_due(reaper.CLAIM_BATCH, slack))

        def sweep(n: int) -> int:
            # Only `settings` points at the database: every step of reap() (the stale-intent
            # step included) must use it, not the process settings.
            enqueued.clear()
            start = time.perf_counter()
            rep = reapers[n].reap(
                enqueue_terminate=enqueue_terminate,
                enqueue_orphan=enqueue_orphan,
                enqueue_spawn=enqueue_spawn,
                scan_orphans=False,
            )
            elapsed = time.perf_counter() - start
            if len(rep.due) != DUE or len(enqueued) != DUE:
                raise RuntimeError(
                    f"sweep on {n} claimed {len(rep.due)}, enqueued "
                    f"{len(enqueued)}, expected {DUE}: {rep.summary()}"
                )
            return int(elapsed * 1e9)

        claim_times: dict[int, list[float]] = {SMALL: [], LARGE: []}
        reap_times: dict[int, list[float]] = {SMALL: [], LARGE: []}
        steady_times: dict[int, list[float]] = {SMALL: [], LARGE: []}
        for r in range(rounds):
            order = (SMALL, LARGE) if r % 2 == 0 else (LARGE, SMALL)
            for n in order:
                _make_due(clients[n], due_ids[n])
                start = time.perf_counter()
                got = claim(n)
                claim_times[n].append(time.perf_counter() - start)
                if got != DUE:
                    raise RuntimeError(f"claim_due on {n} sessions returned {got}, not {DUE}")
            for n in order:
                _make_due(clients[n], due_ids[n])
                reap_times[n].append(sweep(n) / 1e9)
            for n in order:
                _make_due(clients[n], due_ids[n] + touched[n])
                steady_times[n].append(sweep(n) / 1e9)
                if int(clients[n].zscore(C.DEADLINE_INDEX_KEY, touched[n][0]) or 0) <= (
                    redis_now_ms(clients[n])
                ):
                    raise RuntimeError("a touched session's index entry was not re-scored")
        for label, times in (
            ("claim_due (idle part of a sweep)", claim_times),
            ("reap() sweep, orphan scan off", reap_times),
            ("reap() sweep, steady state (+ touched sessions re-scored)", steady_times),
        ):
            small_ms, large_ms = median(times[SMALL]) * 1e3, median(times[LARGE]) * 1e3
            extra = (
                f" + {len(touched[SMALL])} / {len(touched[LARGE])} touched"
                if times is steady_times
                else ""
            )
            report.add(
                f"{label}, {SMALL:,} tracked (baseline)",
                small_ms,
                "ms",
                note=f"{DUE} due{extra}, median of {rounds}",
            )
            ratio = large_ms / small_ms
            report.add(
                f"{label}, {LARGE:,} tracked",
                large_ms,
                "ms",
                baseline=small_ms,
                baseline_label=f"{SMALL:,} tracked",
                ratio=ratio,
                target=f"ratio <= {TARGET}",
                ok=ratio <= TARGET,
            )

        # Commands per sweep (one sweep each, measured alone).
        for n in (SMALL, LARGE):
            _make_due(clients[n], due_ids[n])

            def one_sweep(n: int = n) -> None:
                sweep(n)

            sent, every = count_commands(clients[n], one_sweep)
            report.add(
                f"Redis commands per sweep, {n:,} tracked",
                float(sum(sent.values())),
                "count",
                note=f"round trips sent: {sent}; {sum(every.values())} "
                "executed incl. calls inside Lua",
            )
            report.details[f"commands_per_sweep_{n}"] = {"sent": sent, "commandstats_delta": every}
        report.details["rounds"] = rounds
        report.details["claim_ms"] = {
            n: [round(t * 1e3, 3) for t in v] for n, v in claim_times.items()
        }
        report.details["reap_ms"] = {
            n: [round(t * 1e3, 3) for t in v] for n, v in reap_times.items()
        }
        report.details["steady_state_reap_ms"] = {
            n: [round(t * 1e3, 3) for t in v] for n, v in steady_times.items()
        }
        report.details["touched_entries_per_sweep"] = {n: len(v) for n, v in touched.items()}
    finally:
        server.cleanup()
    return report
