"""The live cost meter and its reconciliation with the provider's billing.

**Meter** (:meth:`CostMeter.meter`, beat task ``atlas.sessions.meter`` every
``ATLAS_METER_INTERVAL_MS``, one minute by default). For every session whose pod runs, one
Lua step per session (pipelined: two round trips per 500 sessions):

* charges the *whole* meter intervals elapsed since the session's "metered until"
  watermark (:data:`~atlas_tasks.constants.METER_INDEX_KEY`, a sorted set scored by it),
  at the pod's ``cost_per_hour``, and moves the watermark by exactly what it charged;
* adds that amount to the month-to-date spend of the session's user and tenant (the
  keys :func:`atlas_tasks.quotas.record_spend` writes, read by ``quotas.usage``);
* publishes a ``cost`` event ``{usd, accrued_usd, cost_per_hour, from_ms, until_ms,
  final}``.

Watermark, spend and event move together in one script, so a redelivered task, two beats
firing at once, or a worker dying mid-run can neither charge a session-minute twice nor
lose one. (``quotas.record_spend`` is its own round trip: calling it after the watermark
moved would lose the minute when the worker dies in between, and before it would charge
it twice on a retry. The script therefore writes the same spend keys itself, named by
:func:`atlas_tasks.quotas.store.spend_key` and dated by :meth:`QuotaStore.month_at`.)
A session that ended is charged its last partial interval, up to ``ended_at_ms``, and
leaves the index; its record is marked ``meter_done`` in the same step, so nothing can
charge it again. A session enters the index in the same Lua step that makes it running
(``finish_spawn``, watermark = ``running_at_ms``), so a session that starts and ends
between two meter runs is still charged, once, at the next run.

**Reconciliation** (:meth:`CostMeter.reconcile`, beat task
``atlas.sessions.reconcile_billing``). Providers with billing (:class:`BillingProvider`:
RunPod's ``GET /v2/billing/pods``) are asked once per (provider, API key) what each pod
cost; each running session's accrued cost is compared with its pod's bill, and the
difference goes out as a ``cost_drift`` event and into ``/metrics``
(``atlas_cost_drift_usd``, ``atlas_cost_drift_max_ratio``,
``atlas_cost_drift_sessions_total``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import chain
from typing import Any, Protocol, cast, runtime_checkable

from atlas_tasks import constants as C
from atlas_tasks import metrics
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import ValidationError
from atlas_tasks.events import EMIT_LUA
from atlas_tasks.quotas.store import SPEND_RETENTION_S, QuotaStore, Scope, check_id, spend_key
from atlas_tasks.redis_lua import load_scripts, pipeline_script
from atlas_tasks.sessions.cost import accrued_usd
from atlas_tasks.sessions.records import SessionRecord, SessionStatus, lua_with_statuses
from atlas_tasks.sessions.service import SessionJob, SessionService
from atlas_tasks.sessions.store import SCAN_BATCH

log = logging.getLogger(__name__)

#: Sessions read and metered per pipeline.
METER_BATCH = 100

_METER_SESSION = lua_with_statuses(
    EMIT_LUA
    + """
-- KEYS: record, meter index, event stream, event channel, spend keys (user, tenant)...
-- ARGV: id, now_ms, interval_ms, spend expire-at (unix s), owe ('1': tagged layout)
-- Returns {verdict, micros charged now, spend owed (micros), owed until (ms)}.
-- Charges whole intervals past the session's watermark (all that is left once it ended),
-- moves the watermark, adds the spend and publishes the `cost` event: one atomic step,
-- so each session-interval is charged exactly once whoever runs the meter, how often.
local id, now, interval = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local f = redis.call('HMGET', KEYS[1], 'status', 'running_at_ms', 'ended_at_ms', 'compute',
                     'meter_done')
if not f[1] then redis.call('ZREM', KEYS[2], id) return {'gone', 0, 0, 0} end
-- Tagged layout (Redis Cluster): the spend keys are in the quota slot, not this one. The
-- charge is added to the record's spend_owed_* in this step instead; the meter applies
-- it to the spend keys next (idempotent by spend_owed_upto) and then clears it here.
local function done(verdict, micros)
  local owed = redis.call('HMGET', KEYS[1], 'spend_owed_micros', 'spend_owed_upto')
  return {verdict, micros, tonumber(owed[1] or '0'), tonumber(owed[2] or '0')}
end
-- charged in full already (the final part went out): whoever indexes it again gets nothing
if f[5] then redis.call('ZREM', KEYS[2], id) return done('done', 0) end
local running_at = tonumber(f[2])
if not running_at then
  if f[1] == $TERMINATED or f[1] == $FAILED then redis.call('ZREM', KEYS[2], id) end
  return done('not_running', 0)
end
local ended = f[1] == $TERMINATED or f[1] == $FAILED
local cost = nil
if f[4] then
  local ok, c = pcall(cjson.decode, f[4])
  if ok and type(c) == 'table' and type(c.cost_per_hour) == 'number'
      and c.cost_per_hour >= 0 then
    cost = c.cost_per_hour
  end
end
local wm = tonumber(redis.call('ZSCORE', KEYS[2], id) or running_at)
local upto
if ended then
  upto = tonumber(f[3]) or now
else
  local n = math.floor((now - wm) / interval)
  if n < 1 then
    redis.call('ZADD', KEYS[2], 'NX', wm, id)
    return done('early', 0)
  end
  upto = wm + n * interval
end
if upto < wm then upto = wm end
-- USD/h x ms -> micro-USD: x 1e6 / 3.6e6
local micros = 0
if cost then micros = math.floor(cost * (upto - wm) / 3.6 + 0.5) end
if ended then
  redis.call('ZREM', KEYS[2], id)
  redis.call('HSET', KEYS[1], 'meter_done', '1')
else
  redis.call('ZADD', KEYS[2], upto, id)
end
if micros > 0 then
  if ARGV[5] == '1' then
    redis.call('HINCRBY', KEYS[1], 'spend_owed_micros', micros)
    redis.call('HSET', KEYS[1], 'spend_owed_upto', upto)
  end
  for i = 5, #KEYS do
    redis.call('INCRBY', KEYS[i], micros)
    redis.call('EXPIREAT', KEYS[i], tonumber(ARGV[4]))
  end
end
if upto <= wm then return done('nothing', 0) end
local accrued = cjson.null
if cost then accrued = cost * (upto - running_at) / 3600000 end
-- The replay log keeps the latest `cost` event only (each carries the running total,
-- accrued_usd): one a minute would otherwise fill a long session's stream to its cap.
local previous = redis.call('HGET', KEYS[1], 'cost_event_id')
if previous then redis.call('XDEL', KEYS[3], previous) end
local event_id = emit(KEYS[3], KEYS[4], cjson.encode({session_id = id, type = 'cost',
  ts = now / 1000, data = {usd = micros / 1000000, accrued_usd = accrued,
  cost_per_hour = cost or cjson.null, from_ms = wm, until_ms = upto, final = ended}}))
redis.call('HSET', KEYS[1], 'cost_event_id', event_id)
if ended then return done('final', micros) end
return done('metered', micros)
"""
)

_APPLY_OWED_SPEND = """
-- KEYS: applied (hash: session id -> owed-until applied), spend keys (user, tenant)...
-- ARGV: id, micros, owed until (ms), spend expire-at (unix s)
-- The tagged layout's second step: a session's owed spend is added once, however often a
-- worker dying between the steps makes the meter apply it again.
local last = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local applied = 0
if tonumber(ARGV[3]) > last then
  for i = 2, #KEYS do
    redis.call('INCRBY', KEYS[i], tonumber(ARGV[2]))
    redis.call('EXPIREAT', KEYS[i], tonumber(ARGV[4]))
  end
  applied = 1
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return applied
"""

_CLEAR_OWED_SPEND = """
-- KEYS: record  ARGV: owed until (ms) that was applied
-- Clears the owed spend the meter just applied, unless a newer charge added to it since.
if redis.call('HGET', KEYS[1], 'spend_owed_upto') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'spend_owed_micros', 'spend_owed_upto')
  return 1
end
return 0
"""

#: Tagged layout: per session, the owed-until (ms) last added to the spend keys (in the
#: quota group's slot, beside the spend keys it guards).
APPLIED_SPEND_KEY = "atlas:quota:meter-applied"


@runtime_checkable
class BillingProvider(Protocol):
    """A provider that reports what its pods cost (RunPod ``GET /v2/billing/pods``)."""

    def pod_billing(self, pod_id: str | None = None, **params: Any) -> dict[str, Any]:
        """``{"records": [{"podId", "totalAmount", ...}], ...}`` for one pod or all."""
        ...


@dataclass
class MeterReport:
    """What one meter run did."""

    #: Sessions charged at least one interval (or their final part).
    metered: list[str] = field(default_factory=list)
    #: Ended sessions charged their last part and dropped from the index.
    finalized: list[str] = field(default_factory=list)
    #: Micro-USD added to month-to-date spend by this run.
    micros: int = 0
    #: Sessions read.
    scanned: int = 0

    def summary(self) -> dict[str, Any]:
        """JSON-safe counts for the task result."""
        return {
            "metered": len(self.metered),
            "finalized": len(self.finalized),
            "usd": self.micros / 1_000_000,
            "scanned": self.scanned,
        }


@dataclass
class Drift:
    """One session's accrued cost next to its pod's bill."""

    session_id: str
    provider: str
    compute_id: str
    accrued_usd: float
    billed_usd: float

    @property
    def drift_usd(self) -> float:
        """Billed minus accrued (positive: the meter is behind the bill)."""
        return self.billed_usd - self.accrued_usd

    @property
    def ratio(self) -> float:
        """``|drift| / billed`` (0 when both are 0; 1 when only the meter counted)."""
        if self.billed_usd > 0:
            return abs(self.drift_usd) / self.billed_usd
        return 0.0 if self.accrued_usd == 0 else 1.0

    def data(self) -> dict[str, Any]:
        """The ``cost_drift`` event's data."""
        return {
            "provider": self.provider,
            "compute_id": self.compute_id,
            "accrued_usd": round(self.accrued_usd, 6),
            "billed_usd": round(self.billed_usd, 6),
            "drift_usd": round(self.drift_usd, 6),
            "drift_ratio": round(self.ratio, 6),
        }


@dataclass
class ReconcileReport:
    """What one reconciliation found."""

    drifts: list[Drift] = field(default_factory=list)
    #: Providers (by name) asked for billing.
    providers: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-safe counts for the task result."""
        worst = max((d.ratio for d in self.drifts), default=0.0)
        return {
            "sessions": len(self.drifts),
            "providers": self.providers,
            "max_ratio": round(worst, 6),
            "errors": self.errors,
        }


class CostMeter(SessionJob):
    """The meter and the reconciliation (see the module docstring).

    Args:
        deps: Redis, settings, providers, publisher.
        service: the session service whose ``provider_for`` builds a session's provider
            client (its per-call key included); default: one on ``deps``.
    """

    def __init__(self, deps: Dependencies, service: SessionService | None = None) -> None:
        super().__init__(deps, service)
        self._meter_script = self.r.register_script(_METER_SESSION)
        self._apply_owed = self.r.register_script(_APPLY_OWED_SPEND)
        self._clear_owed = self.r.register_script(_CLEAR_OWED_SPEND)
        self._quotas = QuotaStore(self.r, namespace=self.ks.namespace)
        self._applied_key = self.ks.group("quota").key(APPLIED_SPEND_KEY)

    # ------------------------------------------------------------------ meter
    def candidates(self) -> list[str]:
        """Tracked sessions plus the ones the meter still owes a final charge (sorted)."""
        return sorted({sid for batch in self.iter_candidates() for sid in batch})

    def iter_candidates(self, batch: int = METER_BATCH) -> Iterator[list[str]]:
        """:meth:`candidates` in batches of about ``batch``, read with ``SSCAN`` and
        ``ZSCAN`` (never one ``SMEMBERS``/``ZRANGE 0 -1``, which block Redis for tens of
        ms at 100k sessions): each id once per pass. A session tracked, or owed its final
        charge, for the whole pass is yielded; one added meanwhile is the next run's."""
        seen: set[str] = set()
        for ids in chain(self.store.iter_ids(SCAN_BATCH), self.store.iter_meter_ids(SCAN_BATCH)):
            fresh = [sid for sid in ids if sid not in seen]
            seen.update(fresh)
            yield from _chunks(fresh, batch)

    def meter(self, *, now_ms: int | None = None, interval_ms: int | None = None) -> MeterReport:
        """Charge every running session's elapsed whole intervals (see the module doc).

        ``now_ms`` defaults to Redis time (tests pass a later one instead of waiting);
        ``interval_ms`` to ``ATLAS_METER_INTERVAL_MS``.
        """
        now = self.store.now_ms() if now_ms is None else now_ms
        interval = interval_ms or self.deps.settings.meter_interval_ms
        month, month_end_s = self._quotas.month_at(now // 1000)
        expire_at = month_end_s + SPEND_RETENTION_S
        report = MeterReport()
        tagged = self.ks.tagged
        if tagged:
            load_scripts(self.r, self._meter_script)
        for batch in self.iter_candidates(METER_BATCH):
            records = self.store.get_fields(
                batch, "status", "running_at_ms", "user_id", "tenant_id"
            )
            calls: list[str] = []
            with self.r.pipeline(transaction=False) as pipe:
                for session_id, record in zip(batch, records, strict=True):
                    report.scanned += 1
                    if record is not None and record.running_at_ms is None and not record.ended:
                        continue  # spawning: nothing runs yet
                    n = self.store.names_of(session_id)
                    keys = [
                        n.record_prefix + session_id,
                        n.meter_index,
                        n.stream_prefix + session_id,
                        n.channel_prefix + session_id,
                    ]
                    if not tagged:  # same slot only when untagged: see _APPLY_OWED_SPEND
                        keys += [spend_key(scope, ident, month) for scope, ident in _scopes(record)]
                    args: list[str | int] = [
                        session_id,
                        now,
                        interval,
                        expire_at,
                        "1" if tagged else "0",
                    ]
                    if tagged:  # a cluster pipeline takes raw EVALSHA only
                        pipeline_script(pipe, self._meter_script, keys, args)
                    else:
                        self._meter_script(keys=keys, args=args, client=pipe)
                    calls.append(session_id)
                replies = pipe.execute() if calls else []
            by_id = dict(zip(batch, records, strict=True))
            for session_id, reply in zip(calls, replies, strict=True):
                verdict, micros = str(reply[0]), int(reply[1])
                owed_micros, owed_upto = int(reply[2]), int(reply[3])
                if tagged and owed_upto:
                    self._settle_owed(
                        session_id,
                        by_id[session_id],
                        owed_micros,
                        owed_upto,
                        month,
                        expire_at,
                        final=verdict in ("final", "done"),
                    )
                report.micros += micros
                if verdict in ("metered", "final"):
                    report.metered.append(session_id)
                if verdict == "final":
                    report.finalized.append(session_id)
        return report

    def _settle_owed(
        self,
        session_id: str,
        record: SessionRecord | None,
        micros: int,
        upto: int,
        month: str,
        expire_at: int,
        *,
        final: bool,
    ) -> None:
        # Tagged layout: add the session's owed spend to its user's and tenant's spend
        # keys (once: guarded by the applied owed-until), then clear it on the record.
        spend = [spend_key(scope, ident, month) for scope, ident in _scopes(record)]
        applied_key = self._applied_key
        self._apply_owed(keys=[applied_key, *spend], args=[session_id, micros, upto, expire_at])
        self._clear_owed(keys=[self.store.keys(session_id).record], args=[upto])
        if final:
            # only once the record no longer owes it: a guard dropped before that could
            # let a retry add the same spend again
            self.r.hdel(applied_key, session_id)

    def watermark(self, session_id: str) -> int | None:
        """The session's "metered until" (ms), or ``None`` if the meter holds none."""
        score = self.r.zscore(self.store.names_of(session_id).meter_index, session_id)
        return None if score is None else int(score)

    # ------------------------------------------------------------------ reconcile
    def reconcile(self, *, now_ms: int | None = None) -> ReconcileReport:
        """Compare each running session's accrued cost with its pod's bill, for providers
        with billing; publish ``cost_drift`` per session and record the drift metrics."""
        report = ReconcileReport()
        now = self.store.now_ms() if now_ms is None else now_ms
        groups: dict[tuple[str, str | None], list[SessionRecord]] = {}
        for batch in self.store.iter_ids(METER_BATCH):
            for record in self.store.get_many(batch):
                if (
                    record is not None
                    and record.status == SessionStatus.RUNNING
                    and record.compute_id
                    and record.running_at_ms is not None
                ):
                    groups.setdefault((record.provider, record.api_key_sealed), []).append(record)
        for (provider_name, _), records in sorted(groups.items(), key=lambda g: g[0][0]):
            try:
                provider = self.service.provider_for(records[0])
            except Exception as exc:  # a bad key must cost its group, not the run
                report.errors.append(f"{provider_name}: {type(exc).__name__}: {exc}")
                continue
            if not isinstance(provider, BillingProvider):
                continue  # no billing API: nothing to reconcile against
            try:
                billed = _billed_by_pod(provider.pod_billing())
            except Exception as exc:
                report.errors.append(f"{provider_name}: billing: {type(exc).__name__}: {exc}")
                log.warning("billing reconciliation: %s: %s", provider_name, exc)
                continue
            if provider_name not in report.providers:
                report.providers.append(provider_name)
            for record in records:
                accrued = accrued_usd(record, now)
                pod_bill = billed.get(record.compute_id or "")
                if accrued is None or pod_bill is None:
                    continue  # no price, or the bill does not list the pod yet
                drift = Drift(record.id, provider_name, record.compute_id or "", accrued, pod_bill)
                report.drifts.append(drift)
                self.deps.publish(record.id, "cost_drift", drift.data())
        self._record_drift(report, now)
        return report

    def _record_drift(self, report: ReconcileReport, now_ms: int) -> None:
        # The last reconciliation's drift per session, replaced as a whole (one MULTI), so
        # the per-session gauge lists running sessions only; plus a running counter of
        # sessions found past the tolerance.
        fields = {
            d.session_id: json.dumps(
                {
                    "provider": d.provider,
                    "at_ms": now_ms,
                    "drift_usd": d.drift_usd,
                    "ratio": d.ratio,
                }
            )
            for d in report.drifts
        }
        drifting: dict[str, int] = {}
        for d in report.drifts:
            if d.ratio > C.COST_DRIFT_TOLERANCE:
                drifting[d.provider] = drifting.get(d.provider, 0) + 1
        with self.r.pipeline(transaction=True) as pipe:  # one key: one slot on a cluster
            pipe.delete(self.ks.key(C.COST_DRIFT_KEY))
            if fields:
                pipe.hset(self.ks.key(C.COST_DRIFT_KEY), mapping=cast(dict[Any, Any], fields))
            pipe.execute()
        for provider, count in drifting.items():
            metrics.incr("cost_drift_sessions", provider, amount=count, client=self.r)


def _billed_by_pod(answer: dict[str, Any]) -> dict[str, float]:
    """USD per pod id from a ``GET /v2/billing/pods`` answer (its buckets summed)."""
    out: dict[str, float] = {}
    for item in answer.get("records") or []:
        if not isinstance(item, dict):
            continue
        pod_id, amount = item.get("podId"), item.get("totalAmount")
        if (
            isinstance(pod_id, str)
            and isinstance(amount, int | float)
            and not isinstance(amount, bool)
        ):
            out[pod_id] = out.get(pod_id, 0.0) + float(amount)
    return out


def _scopes(record: SessionRecord | None) -> list[tuple[Scope, str]]:
    """The quota scopes a session's spend counts against (the admission's ids)."""
    if record is None:
        return []
    out: list[tuple[Scope, str]] = []
    for scope, value in (("user", record.user_id), ("tenant", record.tenant_id)):
        if value is None or isinstance(value, bool) or not isinstance(value, str | int):
            continue  # quotas key users and tenants by string or integer ids only
        try:
            out.append((cast(Scope, scope), check_id(f"{scope}_id", value)))
        except ValidationError:
            log.debug("meter: %s id of session %s is not a quota id", scope, record.id)
    return out


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


__all__ = ["METER_BATCH", "BillingProvider", "CostMeter", "Drift", "MeterReport", "ReconcileReport"]
