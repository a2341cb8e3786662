"""The live cost meter, billing reconciliation and GPU-idle reaping without processes:
records written through the store on a real redis-server (the meter's Lua runs for real),
fake providers, recorders instead of Celery. Times are passed in instead of waited for."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks import events, metrics, quotas
from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.sessions.gpu_idle import GpuIdleWatcher, IdlePolicy
from atlas_tasks.sessions.meter import BillingProvider, CostMeter
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.service import SessionService
from atlas_tasks.sessions.store import Keys, SessionInfo, SessionStore
from atlas_tasks.specs import Capability, Compute, GpuUtilization
from tests.unit.sessions.sessions_support import Published

MINUTE = 60_000
#: 3.6 USD/h is exactly 1 micro-USD per ms: 60 000 micro-USD (0.06 USD) a minute.
PRICE = 3.6


class UtilCloud(MockProvider):
    """A provider reporting per-pod GPU utilisation (``util[pod]``, ``None``: no figure)."""

    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset({Capability.GPU_UTILIZATION})

    def __init__(self) -> None:
        super().__init__()
        self.util: dict[str, list[int] | None] = {}
        self.reads: list[str] = []

    def get_compute(self, compute_id: str) -> Compute:
        self.reads.append(compute_id)
        figures = self.util.get(compute_id)
        gpus = None if figures is None else [GpuUtilization(util_pct=u) for u in figures]
        return Compute(id=compute_id, provider="mock", gpu_utilization=gpus)


class NoUtilCloud(UtilCloud):
    """The same provider, not declaring utilisation."""

    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset()


class BillingCloud(MockProvider):
    """A provider with billing: ``bills[pod]`` USD, in two time buckets."""

    def __init__(self) -> None:
        super().__init__()
        self.bills: dict[str, float] = {}
        self.calls = 0

    def pod_billing(self, pod_id: str | None = None, **params: Any) -> dict[str, Any]:
        self.calls += 1
        records = [{"podId": pod, "totalAmount": usd / 2} for pod, usd in self.bills.items()]
        return {"records": records + records, "metadata": {}}


@dataclass
class Env:
    """One test's store, meter, watcher and recorders."""

    redis: redis.Redis
    store: SessionStore
    deps: Dependencies
    published: Published
    cloud: MockProvider
    terminates: list[tuple[list[str], str]] = field(default_factory=list)

    def meter(self) -> CostMeter:
        return CostMeter(self.deps)

    def watcher(self) -> GpuIdleWatcher:
        return GpuIdleWatcher(self.deps)

    def enqueue(self, ids: list[str], reason: str) -> None:
        self.terminates.append((list(ids), reason))


def _env(client: redis.Redis, cloud: MockProvider, **settings: Any) -> Env:
    reset_settings()
    published = Published()
    deps = Dependencies.from_client(
        client,
        settings=AtlasSettings(**settings),
        providers=lambda name, **_: cloud,
        publish=published,
    )
    return Env(client, SessionService(deps).store, deps, published, cloud)


@pytest.fixture
def env(redis_client: redis.Redis) -> Iterator[Env]:
    yield _env(redis_client, UtilCloud())
    reset_settings()


def running(
    e: Env,
    *,
    price: float | None = PRICE,
    ran_ms: int = 0,
    user: Any = "u1",
    tenant: str | None = "t1",
    **fields: Any,
) -> tuple[str, str]:
    """A running session whose pod has run ``ran_ms`` (``running_at_ms`` backdated)."""
    sid = secrets.token_hex(8)
    pod = f"pod-{sid}"
    e.store.create(
        SessionRecord(
            id=sid,
            provider="mock",
            status=SessionStatus.SPAWNING,
            pod_name=f"atlas-{sid}",
            user_id=user,
            tenant_id=tenant,
            idle_ttl_ms=3_600_000,
            **fields,
        )
    )
    compute: dict[str, Any] = {"id": pod, "provider": "mock"}
    if price is not None:
        compute["cost_per_hour"] = price
    assert e.store.finish_spawn(sid, pod, compute) == "running"
    if ran_ms:
        e.redis.hincrby(Keys(sid).record, "running_at_ms", -ran_ms)
        # finish_spawn entered the meter's index at running_at: backdate that watermark too
        e.redis.zincrby(e.store.names_of(sid).meter_index, -ran_ms, sid)
    return sid, pod


def _running_at(e: Env, sid: str) -> int:
    record = e.store.get(sid)
    assert record is not None and record.running_at_ms is not None
    return record.running_at_ms


def _costs(sid: str, client: redis.Redis) -> list[events.Event]:
    return [ev for ev in events.history(sid, client=client) if ev.type == "cost"]


class LiveCosts:
    """The `cost` events published live (every one: the replay log keeps the latest)."""

    def __init__(self, client: redis.Redis) -> None:
        self.pubsub = client.pubsub()
        self.pubsub.psubscribe(events.session_channel_pattern())
        # the confirmation: the subscription is live before anything is metered
        confirmed = self.pubsub.get_message(timeout=5.0)
        assert confirmed is not None and confirmed["type"] == "psubscribe"

    def drain(self) -> dict[str, list[events.Event]]:
        out: dict[str, list[events.Event]] = {}
        while (message := self.pubsub.get_message(timeout=0.5)) is not None:
            if message["type"] != "pmessage":
                continue
            stream_id, _, body = str(message["data"]).partition("|")
            event = events.Event.model_validate_json(body)
            event.id = stream_id
            if event.type == "cost":
                out.setdefault(event.session_id, []).append(event)
        self.pubsub.close()
        return out


# ---------------------------------------------------------------------------- accrued_usd
def test_info_reports_accrued_cost_from_redis_time(env: Env) -> None:
    sid, _ = running(env, ran_ms=10 * MINUTE)
    info = env.store.info(sid)
    # 10 minutes at 3.6 USD/h = 0.6 USD (plus the few ms of this test)
    assert info.accrued_usd is not None and 0.6 <= info.accrued_usd < 0.601

    env.store.finish_terminate(sid, "requested")
    ended = env.store.info(sid)
    record = env.store.get(sid)
    assert record is not None and record.ended_at_ms is not None
    expected = PRICE * (record.ended_at_ms - _running_at(env, sid)) / 3_600_000
    assert ended.accrued_usd == pytest.approx(expected)
    assert env.store.info(sid).accrued_usd == ended.accrued_usd  # frozen once ended


def test_accrued_is_zero_before_running_and_none_without_a_price(env: Env) -> None:
    sid = secrets.token_hex(8)
    env.store.create(
        SessionRecord(id=sid, provider="mock", status=SessionStatus.SPAWNING, idle_ttl_ms=60_000)
    )
    assert env.store.info(sid).accrued_usd == 0.0
    unpriced, _ = running(env, price=None, ran_ms=MINUTE)
    assert env.store.info(unpriced).accrued_usd is None
    record = env.store.get(unpriced)
    assert record is not None and SessionInfo.from_record(record).accrued_usd is None


# ---------------------------------------------------------------------------- meter
def test_meter_charges_whole_minutes_once_with_events_and_spend(env: Env) -> None:
    sid, _ = running(env, ran_ms=150_000)  # 2.5 minutes ago
    start = _running_at(env, sid)
    now = start + 150_000
    meter = env.meter()
    live = LiveCosts(env.redis)

    report = meter.meter(now_ms=now, interval_ms=MINUTE)
    assert report.metered == [sid] and report.micros == 120_000  # two whole minutes
    assert meter.watermark(sid) == start + 2 * MINUTE
    # the same run again, or a later one within the minute, charges nothing
    assert meter.meter(now_ms=now, interval_ms=MINUTE).micros == 0
    assert meter.meter(now_ms=now + 29_000, interval_ms=MINUTE).micros == 0
    assert meter.meter(now_ms=now + 30_000, interval_ms=MINUTE).micros == 60_000

    costs = live.drain()[sid]
    assert [c.data["usd"] for c in costs] == [0.12, 0.06]
    # the replay log keeps the latest only, with the running total
    assert [c.model_dump(exclude={"ts"}) for c in _costs(sid, env.redis)] == [
        costs[-1].model_dump(exclude={"ts"})
    ]
    assert [c.data["until_ms"] for c in costs] == [start + 2 * MINUTE, start + 3 * MINUTE]
    assert costs[-1].data["accrued_usd"] == pytest.approx(0.18)
    assert costs[-1].data["cost_per_hour"] == PRICE and costs[-1].data["final"] is False
    assert quotas.usage("user", "u1", client=env.redis).month_to_date_usd == pytest.approx(0.18)
    assert quotas.usage("tenant", "t1", client=env.redis).month_to_date_usd == pytest.approx(0.18)


def test_concurrent_meter_runs_charge_each_minute_exactly_once(env: Env) -> None:
    sids = [running(env, ran_ms=5 * MINUTE + 1_000, user="u2", tenant=None)[0] for _ in range(20)]
    now = max(_running_at(env, s) for s in sids) + 5 * MINUTE + 1_000
    totals: list[int] = []
    errors: list[BaseException] = []
    live = LiveCosts(env.redis)

    def run() -> None:
        try:
            for step in range(3):  # three beats' worth, each run twice per thread
                for _ in range(2):
                    totals.append(
                        env.meter().meter(now_ms=now + step * MINUTE, interval_ms=MINUTE).micros
                    )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    # 5 + 2 whole minutes per session, whoever ran them
    assert sum(totals) == 20 * 7 * 60_000
    assert quotas.usage("user", "u2", client=env.redis).month_to_date_usd == pytest.approx(
        20 * 7 * 0.06
    )
    # one event per charge: the 5 minutes owed at once, then one per later minute
    published = live.drain()
    assert all(len(published[s]) == 3 for s in sids)
    assert all(len(_costs(s, env.redis)) == 1 for s in sids)  # the latest, replayed


def test_ended_session_is_charged_its_last_partial_minute_and_leaves(env: Env) -> None:
    sid, _ = running(env, ran_ms=90_000)
    start = _running_at(env, sid)
    meter = env.meter()
    assert meter.meter(now_ms=start + 90_000, interval_ms=MINUTE).micros == 60_000
    env.store.finish_terminate(sid, "requested")
    record = env.store.get(sid)
    assert record is not None and record.ended_at_ms is not None

    report = meter.meter(interval_ms=MINUTE)
    assert report.finalized == [sid]
    assert report.micros == record.ended_at_ms - (start + MINUTE)  # 1 micro-USD per ms
    assert meter.watermark(sid) is None
    last = _costs(sid, env.redis)[-1]
    assert last.data["final"] is True and last.data["until_ms"] == record.ended_at_ms
    assert meter.meter(interval_ms=MINUTE).micros == 0  # nothing twice
    # the spend is the whole accrued cost
    assert quotas.usage("user", "u1", client=env.redis).month_to_date_usd == pytest.approx(
        env.store.info(sid).accrued_usd or 0, abs=1e-6
    )


def test_session_ending_between_meter_runs_is_charged_once(env: Env) -> None:
    sid, _ = running(env, ran_ms=20_000)
    # the spawn task's metrics hook indexes it for the meter (no meter run saw it running)
    metrics.observe_sessions([sid], env.redis)
    env.store.finish_terminate(sid, "requested")
    record = env.store.get(sid)
    assert record is not None and record.ended_at_ms is not None
    whole_life = record.ended_at_ms - _running_at(env, sid)  # 1 micro-USD per ms

    meter = env.meter()
    assert meter.meter(interval_ms=MINUTE).micros == whole_life
    metrics.observe_sessions([sid], env.redis)  # a late duplicate observation
    env.redis.zadd(C.METER_INDEX_KEY, {sid: _running_at(env, sid)})  # or any re-index
    assert meter.meter(interval_ms=MINUTE).micros == 0
    assert quotas.usage("user", "u1", client=env.redis).month_to_date_usd == pytest.approx(
        whole_life / 1_000_000
    )
    assert [c.data["final"] for c in _costs(sid, env.redis)] == [True]


def test_spawning_and_unpriced_sessions(env: Env) -> None:
    spawning = secrets.token_hex(8)
    env.store.create(
        SessionRecord(
            id=spawning, provider="mock", status=SessionStatus.SPAWNING, idle_ttl_ms=60_000
        )
    )
    unpriced, _ = running(env, price=None, ran_ms=2 * MINUTE, user={"not": "an id"})
    report = env.meter().meter(interval_ms=MINUTE)
    assert report.metered == [unpriced] and report.micros == 0
    assert _costs(spawning, env.redis) == []
    (event,) = _costs(unpriced, env.redis)
    assert event.data["cost_per_hour"] is None and event.data["usd"] == 0


# ---------------------------------------------------------------------------- billing
def test_reconcile_reports_drift_per_session_as_event_and_metric(redis_client: redis.Redis) -> None:
    cloud = BillingCloud()
    e = _env(redis_client, cloud)
    assert isinstance(cloud, BillingProvider)
    exact, exact_pod = running(e, ran_ms=60 * MINUTE)
    behind, behind_pod = running(e, ran_ms=60 * MINUTE)
    now = e.store.now_ms()
    cloud.bills = {
        exact_pod: PRICE * (now - _running_at(e, exact)) / 3_600_000,
        behind_pod: 2 * PRICE,
    }  # billed twice what the meter counted

    report = e.meter().reconcile(now_ms=now)
    assert cloud.calls == 1  # one billing request for the provider and key
    by_id = {d.session_id: d for d in report.drifts}
    assert by_id[exact].ratio == pytest.approx(0, abs=1e-6)
    assert by_id[behind].drift_usd == pytest.approx(PRICE, rel=1e-3)
    drift_events = {tid: data for tid, kind, data in e.published.events if kind == "cost_drift"}
    assert set(drift_events) == {exact, behind}
    assert drift_events[behind]["billed_usd"] == pytest.approx(2 * PRICE)

    body = metrics.render_metrics(redis_client)[0].decode()
    assert "session_id" not in body and behind not in body  # labels never carry an id
    values = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("atlas_cost_drift")
    }
    # (2P - P) / 2P, and the exact session's ~0 drift plus the other's P
    assert values['atlas_cost_drift_max_ratio{provider="mock"}'] == pytest.approx(0.5, rel=1e-3)
    assert values['atlas_cost_drift_usd{provider="mock"}'] == pytest.approx(PRICE, rel=1e-3)
    assert 'atlas_cost_drift_sessions_total{provider="mock"} 1.0' in body


def test_reconcile_skips_providers_without_billing(env: Env) -> None:
    running(env, ran_ms=MINUTE)
    assert not isinstance(env.cloud, BillingProvider)
    report = env.meter().reconcile()
    assert report.drifts == [] and report.providers == []
    assert [k for _, k, _ in env.published.events] == []


# ---------------------------------------------------------------------------- GPU idle
def _opted(e: Env, util: list[int] | None, **opts: Any) -> tuple[str, str]:
    fields = {"gpu_idle_below_pct": 10.0, "gpu_idle_window_ms": 60_000, **opts}
    sid, pod = running(e, **fields)
    assert isinstance(e.cloud, UtilCloud)
    e.cloud.util[pod] = util
    return sid, pod


def _age_mark(e: Env, sid: str, ms: int) -> None:
    e.redis.hincrby(C.GPU_IDLE_SINCE_KEY, sid, -ms)


def test_idle_gpus_past_the_window_are_reaped_busy_ones_are_not(env: Env) -> None:
    idle, _ = _opted(env, [0, 3])
    busy, _ = _opted(env, [0, 90])  # one busy GPU is enough
    watcher = env.watcher()

    first = watcher.watch(env.enqueue)
    assert set(first.polled) == {idle, busy} and first.idle == [idle]
    assert first.reaped == [] and env.terminates == []  # idle, but not for the window yet
    assert watcher.idle_since(idle) is not None and watcher.idle_since(busy) is None

    _age_mark(env, idle, 59_000)
    assert watcher.watch(env.enqueue).reaped == []
    _age_mark(env, idle, 1_000)
    assert watcher.watch(env.enqueue).reaped == [idle]
    assert env.terminates == [([idle], C.GPU_IDLE_REASON)]


def test_busy_reading_or_no_reading_clears_the_idle_mark(env: Env) -> None:
    sid, pod = _opted(env, [2])
    assert isinstance(env.cloud, UtilCloud)
    watcher = env.watcher()
    watcher.watch(env.enqueue)
    _age_mark(env, sid, 50_000)
    env.cloud.util[pod] = [40]
    watcher.watch(env.enqueue)
    assert watcher.idle_since(sid) is None
    env.cloud.util[pod] = [1]
    watcher.watch(env.enqueue)
    _age_mark(env, sid, 50_000)
    env.cloud.util[pod] = None  # the provider reported nothing: not idleness
    watcher.watch(env.enqueue)
    assert watcher.idle_since(sid) is None and env.terminates == []


def test_only_opted_in_sessions_on_providers_with_utilisation_are_polled(
    redis_client: redis.Redis,
) -> None:
    cloud = UtilCloud()
    e = _env(redis_client, cloud)
    plain, plain_pod = running(e)
    cloud.util[plain_pod] = [0]
    assert e.watcher().watch(e.enqueue).polled == [] and cloud.reads == []

    # the settings opt every session in; the record's own threshold wins
    e = _env(redis_client, cloud, gpu_idle_below_pct=5, gpu_idle_window_ms=1_000)
    own, own_pod = running(e, gpu_idle_below_pct=50.0)
    cloud.util[own_pod] = [30]
    report = e.watcher().watch(e.enqueue)
    assert set(report.polled) == {plain, own} and set(report.idle) == {plain, own}

    no_util = _env(redis_client, NoUtilCloud(), gpu_idle_below_pct=5, gpu_idle_window_ms=1)
    assert no_util.watcher().watch(no_util.enqueue).polled == []


def test_idle_policy_rules() -> None:
    policy = IdlePolicy(10.0, 1_000)
    assert policy.idle([GpuUtilization(util_pct=9), GpuUtilization(util_pct=0)])
    assert not policy.idle([GpuUtilization(util_pct=10)])
    assert not policy.idle([GpuUtilization(util_pct=None)])
    assert not policy.idle([]) and not policy.idle(None)
    record = SessionRecord(id="x", gpu_idle_window_ms=5)
    assert IdlePolicy.of(record, None) is None  # half a rule is no rule
    assert IdlePolicy.of(record, policy) == IdlePolicy(10.0, 5)


def test_gpu_idle_terminate_goes_through_the_normal_path(env: Env) -> None:
    sid, _ = _opted(env, [0])
    service = SessionService(env.deps)
    env.watcher().watch(env.enqueue)
    _age_mark(env, sid, 60_000)
    ids, reason = env.watcher().watch(env.enqueue).reaped, C.GPU_IDLE_REASON
    assert ids == [sid]
    # touched all along: heartbeats do not save a session with idle GPUs
    env.store.touch(sid)
    assert service.terminate(sid, reason=reason, fence_token="t-1") == "terminated"
    record = env.store.get(sid)
    assert record is not None and record.status == SessionStatus.TERMINATED
    assert record.reason == C.GPU_IDLE_REASON
    terminating = [ev for ev in events.history(sid, client=env.redis) if ev.type == "terminating"]
    assert terminating and terminating[0].data["reason"] == C.GPU_IDLE_REASON
    # the mark goes with the session at the next watch
    env.watcher().watch(env.enqueue)
    assert env.watcher().idle_since(sid) is None


# ---------------------------------------------------------------------------- tagged layout
@pytest.fixture
def tagged_env(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    """The meter in the tagged key layout (Redis Cluster's): a charge is owed on the
    record, then applied to the spend keys in the quota slot, then cleared."""
    monkeypatch.setenv("ATLAS_REDIS_SHARDS", "4")
    yield _env(redis_client, UtilCloud())
    reset_settings()


@pytest.mark.parametrize("dies", ["_apply_owed", "_clear_owed"])
def test_tagged_meter_charges_once_when_a_worker_dies_between_its_steps(
    tagged_env: Env, monkeypatch: pytest.MonkeyPatch, dies: str
) -> None:
    env = tagged_env
    assert env.store.ks.tagged
    sid, _ = running(env, ran_ms=150_000)
    start = _running_at(env, sid)
    meter = env.meter()
    step = getattr(meter, dies)

    def die(*args: Any, **kwargs: Any) -> Any:
        # _apply_owed: nothing applied yet; _clear_owed: applied, the record still owes it
        raise redis.ConnectionError("worker lost Redis")

    monkeypatch.setattr(meter, dies, die)
    with pytest.raises(redis.ConnectionError):
        meter.meter(now_ms=start + 150_000, interval_ms=MINUTE)
    monkeypatch.setattr(meter, dies, step)
    # the next run (a redelivery, the next beat) settles what is owed, once
    meter.meter(now_ms=start + 150_000, interval_ms=MINUTE)
    assert quotas.usage("user", "u1", client=env.redis).month_to_date_usd == pytest.approx(0.12)
    assert env.redis.hget(env.store.keys(sid).record, "spend_owed_micros") is None
    # a later minute adds its own charge, and only it
    meter.meter(now_ms=start + 180_000, interval_ms=MINUTE)
    assert quotas.usage("user", "u1", client=env.redis).month_to_date_usd == pytest.approx(0.18)
    assert quotas.usage("tenant", "t1", client=env.redis).month_to_date_usd == pytest.approx(0.18)
