"""Prometheus metrics for a whole atlas deployment, read from Redis at scrape time.

Any number of web nodes and workers observe events; no per-process state would add up.
So whoever observes something increments a Redis hash (pipelined ``HINCRBY``, or one Lua
call for a session transition), and :class:`AtlasCollector` reads Redis when Prometheus
scrapes. Every process's ``/metrics`` then shows the same cluster-wide numbers, and one
scrape target is enough.

Where each metric is recorded:

=====================================================  =====================================
metric                                                 recorded by
=====================================================  =====================================
``atlas_sessions{provider,status}`` (gauge)            scrape: the tracked set + records
``atlas_spawns_total{provider,outcome}``               worker, after a spawn task (Lua)
``atlas_spawn_failures_total{provider,kind}``          worker, after a spawn task (Lua)
``atlas_spawn_latency_seconds{provider}`` (histogram)  worker: record ``created``→``running``
``atlas_terminates_total{provider,reason}``            worker, after any terminate/spawn task
``atlas_idle_reap_lag_seconds{provider}`` (histogram)  worker: idle claim → pod confirmed gone
``atlas_terminate_failures_total{provider}``           worker: a terminate gave up its retries
``atlas_terminate_retries_total``                      worker: a terminate was retried
``atlas_orphans_reaped_total{provider}``               worker: an orphan pod was terminated
``atlas_accrued_usd_total{provider}``                  ended sessions (worker, Lua) + live
                                                       ones (scrape): cost/h × running time
``atlas_cost_drift_usd{provider}``,                    billing reconciliation (beat task):
``atlas_cost_drift_max_ratio{provider}``,              its last run; the counter: sessions
``atlas_cost_drift_sessions_total{provider}``          past 1 % (``sessions.meter``)
``atlas_provider_request_duration_seconds``            every process, provider request hook
``{provider,api,status}`` (histogram)
``atlas_provider_rate_limited_total{provider,api}``    provider request hook (HTTP 429)
``atlas_reaper_last_sweep_age_seconds``                scrape: ``atlas:reaper:last-sweep``
``atlas_reaper_sweeps_total`` and friends              scrape: ``atlas:reaper:stats``
``atlas_jobs{provider,status}`` (gauge)                scrape: ``SCAN`` of job records
``atlas_redis_up``                                     scrape: 0 when Redis did not answer
=====================================================  =====================================

Session counters are counted once per session even when several tasks look at it: the
recording script marks the record (``m_run``/``m_end`` fields) in the same atomic step.

Redis Cluster (the tagged layout): the one script here, ``_OBSERVE``, runs once per
registry shard; it declares the shard's meter index (``KEYS[1]``) and builds the shard's
record keys and metrics hashes from ARGV prefixes that carry the same hash tag
(``<ns>:{s<k>}:session:``, ``<ns>:{s<k>}:metrics:``), so it touches one slot. Everything
else is single-key commands and non-transactional pipelines; a scrape sums the shards'
hashes with the namespace's own (:func:`metric_keyspaces`).

Serving: :func:`metrics_wsgi_app`, :func:`metrics_asgi_app` (alias :func:`metrics_app`),
:func:`render_metrics` for any other framework, or ``atlas-tasks metrics --port 9808``.
Recording is on unless ``ATLAS_METRICS=0``; it never fails the work it observes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import redis
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from atlas_tasks import constants as C
from atlas_tasks.config import get_settings
from atlas_tasks.jobs.store import JobStore, job_key_pattern
from atlas_tasks.key_groups import fill
from atlas_tasks.keyspace_names import Keyspace, keyspace
from atlas_tasks.providers.base import RequestInfo
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sessions.records import SessionStatus, lua_with_statuses
from atlas_tasks.sessions.store import store_for

log = logging.getLogger(__name__)

#: Prefix of every metrics key: ``<prefix>c:<name>`` counters, ``<prefix>h:<name>``
#: histograms (hash fields are label values joined by :data:`SEP`).
PREFIX = "atlas:metrics:"
#: Separator of label values (and of a histogram field's suffix) in hash fields.
SEP = "\t"
#: The reaper's keys (written by :mod:`atlas_tasks.tasks.reaper`).
LAST_SWEEP_KEY = "atlas:reaper:last-sweep"
SWEEP_STATS_KEY = "atlas:reaper:stats"


def _key(template: str) -> str:
    # Every metrics key in the deployment's namespace (templates above say "atlas:").
    return keyspace().key(template)


#: Job records scanned at most per scrape (jobs have no index; SCAN is O(keyspace)).
JOB_SCAN_MAX_KEYS = 200_000

#: Histogram upper bounds, seconds.
SPAWN_LATENCY_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0)
IDLE_LAG_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: Counters: name -> (help, label names).
COUNTERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "spawns": ("Spawns finished, by outcome (running or failed).", ("provider", "outcome")),
    "spawn_failures": ("Failed spawns by error kind.", ("provider", "kind")),
    "terminates": ("Sessions whose pod was confirmed terminated.", ("provider", "reason")),
    "terminate_failures": (
        "Terminates that exhausted their retries (the reaper retries).",
        ("provider",),
    ),
    "terminate_retries": ("Terminate attempts retried (task retries and batch re-sends).", ()),
    "orphans_reaped": ("Untracked prefixed pods terminated by the reaper.", ("provider",)),
    "provider_rate_limited": ("Provider answers with HTTP 429.", ("provider", "api")),
    "cost_drift_sessions": (
        "Sessions whose accrued cost differed from their pod's bill by "
        "more than 1 % at a billing reconciliation.",
        ("provider",),
    ),
}
#: Histograms: name -> (help, label names, bounds in seconds).
HISTOGRAMS: dict[str, tuple[str, tuple[str, ...], tuple[float, ...]]] = {
    "spawn_latency_seconds": (
        "Time from spawn() to the pod running.",
        ("provider",),
        SPAWN_LATENCY_BUCKETS,
    ),
    "idle_reap_lag_seconds": (
        "Time from an idle session's claim to its pod confirmed terminated.",
        ("provider",),
        IDLE_LAG_BUCKETS,
    ),
    "provider_request_duration_seconds": (
        "Provider HTTP attempts (status 'error' = no answer).",
        ("provider", "api", "status"),
        REQUEST_BUCKETS,
    ),
}
#: Running total of USD accrued by ended sessions (a float counter, ``HINCRBYFLOAT``).
ACCRUED_KEY = PREFIX + "c:accrued_usd"


def enabled() -> bool:
    """Whether this process records metrics (the ``ATLAS_METRICS`` setting)."""
    return get_settings().metrics


def _field(*labels: str) -> str:
    return SEP.join(str(v).replace(SEP, " ") for v in labels)


def label_field(*labels: str) -> str:
    """The hash field of a counter's label values (for writers outside this module)."""
    return _field(*labels)


def _bucket(bounds: Sequence[float], seconds: float) -> int:
    """1-based index of the first bound ``>= seconds`` (``len(bounds) + 1`` = +Inf)."""
    for i, bound in enumerate(bounds, 1):
        if seconds <= bound:
            return i
    return len(bounds) + 1


def _ms_bounds(bounds: Sequence[float]) -> str:
    return " ".join(str(int(round(b * 1000))) for b in bounds)


# --------------------------------------------------------------------------- recording
_OBSERVE = lua_with_statuses("""
-- KEYS: meter index  ARGV: record prefix, metrics prefix, spawn bounds (ms), lag bounds (ms),
-- ids... (all of one registry shard: the records, the metrics prefix and the meter index
-- share its hash tag in the tagged layout, so the keys built here are in KEYS[1]'s slot)
-- Counts what happened to each session since the last look, once per session: m_run marks
-- a counted start, m_end a counted end. Never creates a record that expired. A counted
-- start also enters the session in the cost meter's index (watermark = running_at, NX),
-- unless the meter charged it in full already (meter_done). finish_spawn does that itself
-- since the meter exists; this covers sessions that started running before an upgrade.
local P = ARGV[2]
local function bounds(s) local t = {} for b in string.gmatch(s, '%d+') do
  t[#t + 1] = tonumber(b) end return t end
local SPAWN, LAG = bounds(ARGV[3]), bounds(ARGV[4])
local function observe(name, labels, bs, ms)
  if ms < 0 then ms = 0 end
  local idx = #bs + 1
  for i, b in ipairs(bs) do if ms <= b then idx = i break end end
  local h = P .. 'h:' .. name
  redis.call('HINCRBY', h, labels .. '\\tb' .. idx, 1)
  redis.call('HINCRBY', h, labels .. '\\tcount', 1)
  redis.call('HINCRBY', h, labels .. '\\tsum_us', ms * 1000)
end
local counted = 0
for i = 5, #ARGV do
  local rec = ARGV[1] .. ARGV[i]
  local f = redis.call('HMGET', rec, 'status', 'provider', 'created_at_ms', 'running_at_ms',
                       'terminating_at_ms', 'ended_at_ms', 'reason', 'm_run', 'm_end',
                       'adopted', 'error', 'compute', 'meter_done')
  local status, provider = f[1], f[2] or ''
  if status then
    if f[4] and not f[8] and not f[10] then
      redis.call('HSET', rec, 'm_run', '1')
      if not f[13] then redis.call('ZADD', KEYS[1], 'NX', tonumber(f[4]), ARGV[i]) end
      redis.call('HINCRBY', P .. 'c:spawns', provider .. '\\trunning', 1)
      if f[3] then observe('spawn_latency_seconds', provider, SPAWN,
                           tonumber(f[4]) - tonumber(f[3])) end
      counted = counted + 1
    end
    if (status == $FAILED or status == $TERMINATED) and not f[9] then
      redis.call('HSET', rec, 'm_end', '1')
      counted = counted + 1
      if status == $FAILED then
        local kind = 'unknown'
        if f[11] then
          local ok, err = pcall(cjson.decode, f[11])
          if ok and type(err) == 'table' and type(err.kind) == 'string' then kind = err.kind end
        end
        redis.call('HINCRBY', P .. 'c:spawns', provider .. '\\tfailed', 1)
        redis.call('HINCRBY', P .. 'c:spawn_failures', provider .. '\\t' .. kind, 1)
      else
        local reason = f[7] or 'unknown'
        redis.call('HINCRBY', P .. 'c:terminates', provider .. '\\t' .. reason, 1)
        if reason == 'idle_timeout' and f[5] and f[6] then
          observe('idle_reap_lag_seconds', provider, LAG, tonumber(f[6]) - tonumber(f[5]))
        end
        if f[4] and f[6] and f[12] then
          local ok, compute = pcall(cjson.decode, f[12])
          if ok and type(compute) == 'table' and type(compute.cost_per_hour) == 'number' then
            local hours = (tonumber(f[6]) - tonumber(f[4])) / 3600000
            if hours > 0 then
              redis.call('HINCRBYFLOAT', P .. 'c:accrued_usd', provider,
                         compute.cost_per_hour * hours)
            end
          end
        end
      end
    end
  end
end
return counted
""")

# One Script object (it keeps the SHA and re-loads the source after a Redis restart);
# each call passes the client to run on.
_observe_script: Any = None


def observe_sessions(session_ids: Iterable[str], client: redis.Redis | None = None) -> int:
    """Count what happened to these sessions (started, failed, terminated) since they
    were last observed; one Redis call per registry shard among them (one call in the
    untagged layout). Returns how many transitions were counted.

    Why per shard: the script marks each record and counts in the same atomic step, so
    on Redis Cluster it may only touch one slot. Each shard's call counts into that
    shard's metrics hashes (``<ns>:{s<k>}:metrics:...``); a scrape sums them."""
    ids = [str(s) for s in session_ids if s]
    if not ids:
        return 0
    global _observe_script
    r = client or get_redis()
    if _observe_script is None:
        _observe_script = r.register_script(_OBSERVE)
    ks = keyspace()
    by_shard: dict[int, list[str]] = {}
    for session_id in ids:
        by_shard.setdefault(ks.shard_index(session_id), []).append(session_id)
    counted = 0
    for shard_ids in by_shard.values():
        shard = ks.shard_of(shard_ids[0])
        counted += int(
            _observe_script(
                keys=[shard.key(C.METER_INDEX_KEY)],
                args=[
                    fill(shard, C.SESSION_KEY, id=""),
                    shard.key(PREFIX),
                    _ms_bounds(SPAWN_LATENCY_BUCKETS),
                    _ms_bounds(IDLE_LAG_BUCKETS),
                    *shard_ids,
                ],
                client=r,
            )
        )
    return counted


def metric_keyspaces() -> list[Keyspace]:
    """Every keyspace whose ``metrics:`` hashes a scrape sums: the namespace's own
    (counters written by :func:`incr` and the request hook, single-key commands) and, in
    the tagged layout, each registry shard's (written by :func:`observe_sessions`)."""
    ks = keyspace()
    return [ks, *ks.all_shards()] if ks.tagged else [ks]


def _summed(hashes: Sequence[dict[str, str]]) -> dict[str, str]:
    """Field-wise sum of metrics hashes (the same counter kept in several shards)."""
    if len(hashes) == 1:
        return hashes[0]
    total: dict[str, float] = {}
    exact: dict[str, int] = {}
    for values in hashes:
        for field, value in values.items():
            if value.lstrip("-").isdigit():
                exact[field] = exact.get(field, 0) + int(value)
            else:
                total[field] = total.get(field, 0.0) + float(value)
    out = {field: str(count) for field, count in exact.items()}
    for field, amount in total.items():
        out[field] = repr(amount + exact.get(field, 0))
    return out


def incr(name: str, *labels: str, amount: int = 1, client: redis.Redis | None = None) -> None:
    """Add ``amount`` to counter ``name`` (a key of :data:`COUNTERS`) at ``labels``."""
    (client or get_redis()).hincrby(_key(PREFIX) + "c:" + name, _field(*labels), amount)


def record_request(info: RequestInfo, client: redis.Redis | None = None) -> None:
    """Provider request hook: latency by provider/api/status, and 429s. One pipelined
    round trip; a Redis failure is logged at DEBUG and swallowed (never fails the call)."""
    if not enabled():
        return
    status = str(info.status) if info.status is not None else "error"
    labels = _field(info.provider, info.api, status)
    bounds = HISTOGRAMS["provider_request_duration_seconds"][2]
    key = _key(PREFIX) + "h:provider_request_duration_seconds"
    try:
        with (client or get_redis()).pipeline(transaction=False) as pipe:
            pipe.hincrby(key, f"{labels}{SEP}b{_bucket(bounds, info.duration_s)}", 1)
            pipe.hincrby(key, f"{labels}{SEP}count", 1)
            pipe.hincrby(key, f"{labels}{SEP}sum_us", int(info.duration_s * 1_000_000))
            if info.status == 429:
                pipe.hincrby(
                    _key(PREFIX) + "c:provider_rate_limited", _field(info.provider, info.api), 1
                )
            pipe.execute()
    except redis.RedisError as exc:
        log.debug("metrics: provider request not recorded: %s", exc)


# Task names whose completion may change a session's state.
_SESSION_TASKS = frozenset({C.TASK_SPAWN, C.TASK_TERMINATE, C.TASK_TERMINATE_BATCH})
_ORPHAN_TASK = C.TASK_TERMINATE_ORPHAN


def on_task_postrun(
    sender: Any = None,
    args: Sequence[Any] | None = None,
    retval: Any = None,
    state: str | None = None,
    **_: Any,
) -> None:
    """Celery ``task_postrun`` handler (worker side): records what a compute task did."""
    name = getattr(sender, "name", "")
    if not enabled() or not args or (name not in _SESSION_TASKS and name != _ORPHAN_TASK):
        return
    try:
        if state == "RETRY":
            if name in (C.TASK_TERMINATE, _ORPHAN_TASK):
                incr("terminate_retries")
            return
        if name == _ORPHAN_TASK:
            if isinstance(retval, dict) and retval.get("outcome") == "terminated":
                incr("orphans_reaped", str(args[0]))
            return
        ids = list(args[0]) if name == C.TASK_TERMINATE_BATCH else [str(args[0])]
        observe_sessions(ids)
        if name == C.TASK_TERMINATE_BATCH and isinstance(retval, dict):
            retrying = int((retval.get("outcomes") or {}).get("retrying") or 0)
            if retrying:
                incr("terminate_retries", amount=retrying)
        if (
            name == C.TASK_TERMINATE
            and isinstance(retval, dict)
            and retval.get("outcome") == "terminate_failed"
        ):
            (record,) = store_for(get_redis()).get_fields([str(args[0])], "provider")
            incr("terminate_failures", (record.provider if record else "") or "unknown")
    except redis.RedisError as exc:  # metrics never fail or retry the work they watch
        log.debug("metrics: %s not recorded: %s", name, exc)


_installed = False


def install_hooks() -> None:
    """Record provider requests (every process) and compute tasks (workers). Idempotent;
    called by :mod:`atlas_tasks.celery_app` when it is imported."""
    global _installed
    if _installed:
        return
    _installed = True
    from celery import signals

    from atlas_tasks.providers.registry import add_default_hook

    add_default_hook(record_request)
    signals.task_postrun.connect(
        on_task_postrun, weak=False, dispatch_uid="atlas_tasks.metrics.postrun"
    )


# --------------------------------------------------------------------------- scraping
def _labels(field: str, width: int) -> list[str]:
    parts = field.split(SEP)
    return (parts + [""] * width)[:width]


class AtlasCollector(Collector):
    """Reads every atlas metric from Redis at scrape time (see the module doc).

    Args:
        client: a ``decode_responses=True`` Redis client; default ``ATLAS_REDIS_URL``'s.
    """

    def __init__(self, client: Callable[[], redis.Redis] | redis.Redis | None = None) -> None:
        self._client = client

    def _redis(self) -> redis.Redis:
        if isinstance(self._client, redis.Redis):
            return self._client
        return self._client() if self._client is not None else get_redis()

    def collect(self) -> Iterator[Metric]:
        """Yield the metric families (``atlas_redis_up 0`` alone when Redis fails)."""
        up = GaugeMetricFamily("atlas_redis_up", "1 when the metrics scrape could read Redis.")
        try:
            families = self._read(self._redis())
        except redis.RedisError as exc:
            log.warning("metrics scrape: Redis failed: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    def _read(self, r: redis.Redis) -> list[Metric]:
        # Not a transaction: single-key reads that may span slots (Redis Cluster); the
        # tracked ids come from the session store, which knows its shards.
        spaces = metric_keyspaces()
        names = [f"c:{name}" for name in COUNTERS] + [f"h:{name}" for name in HISTOGRAMS]
        with r.pipeline(transaction=False) as pipe:
            pipe.time()
            pipe.get(_key(LAST_SWEEP_KEY))
            pipe.hgetall(_key(SWEEP_STATS_KEY))
            pipe.hgetall(_key(C.COST_DRIFT_KEY))
            for name in [ACCRUED_KEY.removeprefix(PREFIX), *names]:
                for space in spaces:
                    pipe.hgetall(space.key(PREFIX) + name)
            (secs, micros), last_sweep, stats, drift, *raw = pipe.execute()
        tracked = store_for(r).list_ids()
        width = len(spaces)
        accrued, *hashes = [_summed(raw[i : i + width]) for i in range(0, len(raw), width)]
        now_ms = int(secs) * 1000 + int(micros) // 1000
        out: list[Metric] = []
        counter_hashes = hashes[: len(COUNTERS)]
        histogram_hashes = hashes[len(COUNTERS) :]
        for (name, (doc, label_names)), values in zip(
            COUNTERS.items(), counter_hashes, strict=True
        ):
            family = CounterMetricFamily(f"atlas_{name}", doc, labels=list(label_names))
            for field, value in sorted(values.items()):
                family.add_metric(_labels(field, len(label_names)), float(value))
            out.append(family)
        for (name, (doc, label_names, bounds)), values in zip(
            HISTOGRAMS.items(), histogram_hashes, strict=True
        ):
            out.append(_histogram(name, doc, label_names, bounds, values))
        out.extend(self._sessions(r, sorted(tracked), now_ms, accrued))
        out.extend(_reaper(last_sweep, stats, now_ms))
        out.extend(_cost_drift(drift))
        out.append(_jobs(r))
        return out

    def _sessions(
        self, r: redis.Redis, ids: list[str], now_ms: int, accrued: dict[str, str]
    ) -> list[Metric]:
        counts: dict[tuple[str, str], int] = {}
        usd: dict[str, float] = {p: float(v) for p, v in accrued.items()}
        rows = store_for(r).get_fields(ids, "provider", "status", "running_at_ms", "compute")
        for record in rows:
            if record is None or record.status is None:
                continue  # expired between the two reads
            key = (record.provider, str(record.status))
            counts[key] = counts.get(key, 0) + 1
            if record.status in _BILLED and record.running_at_ms and record.compute:
                cost = _cost_per_hour(record.compute)
                if cost:
                    hours = max(0, now_ms - record.running_at_ms) / 3_600_000
                    usd[record.provider] = usd.get(record.provider, 0.0) + cost * hours
        gauge = GaugeMetricFamily(
            "atlas_sessions",
            "Tracked sessions by provider and status.",
            labels=["provider", "status"],
        )
        for (provider, status), n in sorted(counts.items()):
            gauge.add_metric([provider, status], n)
        cost_family = CounterMetricFamily(
            "atlas_accrued_usd",
            "USD accrued by sessions: cost_per_hour × running time "
            "(ended sessions plus the running ones so far).",
            labels=["provider"],
        )
        for provider, value in sorted(usd.items()):
            cost_family.add_metric([provider], value)
        return [gauge, cost_family]


#: Statuses whose pod accrues cost now.
_BILLED = frozenset({SessionStatus.RUNNING, SessionStatus.TERMINATING})


def _cost_per_hour(compute: dict[str, Any]) -> float | None:
    value = compute.get("cost_per_hour") if isinstance(compute, dict) else None
    return float(value) if isinstance(value, int | float) else None


def _histogram(
    name: str,
    doc: str,
    label_names: tuple[str, ...],
    bounds: tuple[float, ...],
    values: dict[str, str],
) -> HistogramMetricFamily:
    series: dict[str, dict[str, int]] = {}
    for field, value in values.items():
        labels, _, part = field.rpartition(SEP)
        series.setdefault(labels, {})[part] = int(value)
    family = HistogramMetricFamily(f"atlas_{name}", doc, labels=list(label_names))
    for labels, parts in sorted(series.items()):
        cumulative, buckets = 0, []
        for i, bound in enumerate(bounds, 1):
            cumulative += parts.get(f"b{i}", 0)
            buckets.append((repr(bound), float(cumulative)))
        cumulative += parts.get(f"b{len(bounds) + 1}", 0)
        buckets.append(("+Inf", float(cumulative)))
        family.add_metric(
            _labels(labels, len(label_names)), buckets, sum_value=parts.get("sum_us", 0) / 1_000_000
        )
    return family


def _reaper(last_sweep: str | None, stats: dict[str, str], now_ms: int) -> list[Metric]:
    age = GaugeMetricFamily(
        "atlas_reaper_last_sweep_age_seconds",
        "Seconds since the last reaper sweep ran (+Inf: never).",
    )
    at_ms: int | None = None
    if last_sweep:
        try:
            at_ms = int(json.loads(last_sweep)["at_ms"])
        except (ValueError, KeyError, TypeError):
            at_ms = None
    age.add_metric([], float("inf") if at_ms is None else max(0, now_ms - at_ms) / 1000)
    out: list[Metric] = [age]
    for field, name, doc in (
        ("sweeps", "atlas_reaper_sweeps", "Reaper sweeps that ran."),
        ("skipped", "atlas_reaper_sweeps_skipped", "Sweeps skipped (throttled/overlapping)."),
        ("due", "atlas_reaper_idle_claimed", "Idle sessions claimed by sweeps."),
        ("orphans", "atlas_reaper_orphans_found", "Orphan pods found by sweeps."),
    ):
        family = CounterMetricFamily(name, doc)
        family.add_metric([], float(stats.get(field) or 0))
        out.append(family)
    return out


def _cost_drift(drift: dict[str, str]) -> list[Metric]:
    """The last billing reconciliation (``atlas:meter:drift``, one entry per running
    session) summed per provider; per-session figures are the ``cost_drift`` events
    (labels never carry an id)."""
    total = GaugeMetricFamily(
        "atlas_cost_drift_usd",
        "Billed minus accrued USD of the running sessions at the "
        "last billing reconciliation, summed.",
        labels=["provider"],
    )
    worst = GaugeMetricFamily(
        "atlas_cost_drift_max_ratio",
        "Largest |billed - accrued| / billed of a running "
        "session at the last billing reconciliation.",
        labels=["provider"],
    )
    sums: dict[str, float] = {}
    ratios: dict[str, float] = {}
    for raw in drift.values():
        try:
            item = json.loads(raw)
            provider, usd, ratio = (
                str(item["provider"]),
                float(item["drift_usd"]),
                float(item["ratio"]),
            )
        except (ValueError, KeyError, TypeError):
            continue
        sums[provider] = sums.get(provider, 0.0) + usd
        ratios[provider] = max(ratios.get(provider, 0.0), ratio)
    for provider in sorted(sums):
        total.add_metric([provider], sums[provider])
        worst.add_metric([provider], ratios[provider])
    return [total, worst]


def _jobs(r: redis.Redis) -> Metric:
    counts: dict[tuple[str, str], int] = {}
    pattern = job_key_pattern()
    seen = 0
    batch: list[str] = []

    store = JobStore(r)

    def flush() -> None:
        for job in store.summaries(batch):
            k = (job.provider, str(job.status))
            counts[k] = counts.get(k, 0) + 1
        batch.clear()

    for key in r.scan_iter(match=pattern, count=1000, _type="hash"):
        batch.append(str(key))
        seen += 1
        if len(batch) >= 500:
            flush()
        if seen >= JOB_SCAN_MAX_KEYS:
            break
    if batch:
        flush()
    gauge = GaugeMetricFamily(
        "atlas_jobs",
        "Serverless job records by provider and status.",
        labels=["provider", "status"],
    )
    for (provider, status), n in sorted(counts.items()):
        gauge.add_metric([provider, status], n)
    return gauge


# --------------------------------------------------------------------------- serving
def build_registry(client: redis.Redis | None = None) -> CollectorRegistry:
    """A registry holding only :class:`AtlasCollector` (no process metrics: they would
    describe whichever process happened to serve the scrape)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AtlasCollector(client))
    return registry


def render_metrics(client: redis.Redis | None = None) -> tuple[bytes, str]:
    """``(body, content type)`` of one scrape, for any web framework."""
    return generate_latest(build_registry(client)), CONTENT_TYPE_LATEST


def metrics_wsgi_app(client: redis.Redis | None = None) -> Callable[..., Any]:
    """A WSGI app answering every path with the metrics (mount it at ``/metrics``)."""
    from prometheus_client import make_wsgi_app

    return make_wsgi_app(build_registry(client))


def metrics_asgi_app(client: redis.Redis | None = None) -> Callable[..., Any]:
    """An ASGI app answering every path with the metrics (Starlette: ``Mount("/metrics",
    app=metrics_asgi_app())``)."""
    from prometheus_client import make_asgi_app

    return make_asgi_app(build_registry(client))


#: The app the dashboard mounts at ``/metrics`` (ASGI, like the dashboard).
metrics_app = metrics_asgi_app


__all__ = [
    "AtlasCollector",
    "COUNTERS",
    "HISTOGRAMS",
    "PREFIX",
    "build_registry",
    "enabled",
    "incr",
    "install_hooks",
    "metric_keyspaces",
    "label_field",
    "metrics_app",
    "metrics_asgi_app",
    "metrics_wsgi_app",
    "observe_sessions",
    "on_task_postrun",
    "record_request",
    "render_metrics",
]
