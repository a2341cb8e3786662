"""Quota reservations and the hard lifetime through the session core, without processes.

Every end of a session must give its quota reservation back, whatever ended it: the idle
clock, a stop, the hard lifetime, a failed spawn (with or without a cleanup owed), an
orphaned intent the reaper resolves, a data-loss adoption's terminate. The release runs
inside the store's end transition (``finish_terminate`` / ``fail_spawn``), so these tests
drive those paths through :class:`SessionService` and :class:`SessionReaper` on a real
redis-server (the Lua runs for real) and check the user's and tenant's usage afterwards.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field

from atlas_tasks import constants as C
from atlas_tasks import events, sealing
from atlas_tasks.errors import AtlasError
from atlas_tasks.quotas.store import QuotaStore, Usage
from atlas_tasks.sessions.reaper import ReapReport
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.store import Keys
from tests.unit.sessions.sessions_support import PREFIX, Wired, new_session, record

USER, TENANT = "u-1", "t-1"
PRICE = 2.5


@dataclass
class Enqueued:
    """What a sweep would have enqueued."""

    terminates: list[tuple[list[str], str]] = field(default_factory=list)

    def sweep(self, w: Wired) -> ReapReport:
        return w.reaper.reap(
            enqueue_terminate=lambda ids, reason: self.terminates.append((list(ids), reason)),
            enqueue_orphan=lambda *_: None,
            enqueue_spawn=lambda *_: None,
            scan_orphans=False,
        )


def _quotas(w: Wired) -> QuotaStore:
    return QuotaStore(w.redis)


def _admit(w: Wired, sid: str) -> None:
    admission = _quotas(w).try_admit(sid, user_id=USER, tenant_id=TENANT, hourly_usd=PRICE)
    assert admission.admitted


def _usage(w: Wired) -> tuple[Usage, Usage]:
    q = _quotas(w)
    return q.usage("user", USER), q.usage("tenant", TENANT)


def _assert_held(w: Wired, sid: str, hourly: float = PRICE) -> None:
    assert _quotas(w).reservation(sid) is not None
    for use in _usage(w):
        assert (use.sessions, use.hourly_usd) == (1, hourly)


def _assert_released(w: Wired, sid: str) -> None:
    assert _quotas(w).reservation(sid) is None
    for use in _usage(w):
        assert (use.sessions, use.hourly_usd) == (0, 0.0)


def _spawning(
    w: Wired, *, max_lifetime_ms: int | None = None, warning_ms: int = 0, idle_ttl_ms: int = 60_000
) -> tuple[str, str]:
    """An admitted ``spawning`` session (as ``client.spawn`` records it): (id, sealed)."""
    if max_lifetime_ms is None:
        sid, sealed = new_session(w.store, idle_ttl_ms=idle_ttl_ms)
    else:
        sid = secrets.token_hex(8)
        request = {
            "gpu": "h100",
            "image": "me/infer:1",
            "name": f"{PREFIX}{sid}",
            "idle_ttl_ms": idle_ttl_ms,
            "auth": "none",
        }
        sealed = sealing.seal({"request": request, "secret": None})
        w.store.create(
            SessionRecord(
                id=sid,
                provider="mock",
                status=SessionStatus.SPAWNING,
                pod_name=f"{PREFIX}{sid}",
                idle_ttl_ms=idle_ttl_ms,
                auth="none",
                base_url="",
                spawn_sealed=sealed,
                tenant_id=TENANT,
                max_lifetime_ms=max_lifetime_ms,
            ),
            expiry_warning_ms=warning_ms,
        )
    _admit(w, sid)
    return sid, sealed


def _running(w: Wired, **kwargs: int) -> str:
    sid, sealed = _spawning(w, **kwargs)
    w.service.spawn(sid, sealed, attempt_id="t-spawn")
    assert record(w.store, sid).status == SessionStatus.RUNNING
    return sid


# ---------------------------------------------------------------------------- running
def test_running_corrects_the_reservation_to_the_pods_real_price(wired: Wired) -> None:
    sid = _running(wired)
    # the mock cloud's pods cost 0.0 an hour: the catalog estimate is replaced
    reservation = _quotas(wired).reservation(sid)
    assert reservation is not None and reservation.hourly_usd == 0.0
    assert reservation.price_known
    assert [u.sessions for u in _usage(wired)] == [1, 1]


# ---------------------------------------------------------------------------- end paths
def test_idle_reap_releases(wired: Wired) -> None:
    sid = _running(wired)
    wired.redis.delete(Keys(sid).alive)
    wired.redis.zadd(C.DEADLINE_INDEX_KEY, {sid: 0})
    q = Enqueued()
    q.sweep(wired)
    assert q.terminates == [([sid], "idle_timeout")]
    _assert_held(wired, sid, hourly=0.0)  # claimed, not ended yet

    assert wired.service.terminate(sid, reason="idle_timeout", fence_token="t") == "terminated"
    _assert_released(wired, sid)


def test_stop_releases_and_a_second_end_releases_nothing_more(wired: Wired) -> None:
    sid = _running(wired)
    other = _running(wired)  # same user and tenant: must keep its reservation
    assert wired.store.request_stop(sid, "requested", 30_000) == "ok"
    assert wired.service.terminate(sid, reason="requested", fence_token="t") == "terminated"
    wired.store.finish_terminate(sid, "requested")  # a duplicate end: idempotent
    assert _quotas(wired).reservation(sid) is None
    for use in _usage(wired):
        assert use.sessions == 1
    assert _quotas(wired).reservation(other) is not None


def test_max_lifetime_ends_a_touched_session_and_releases(wired: Wired) -> None:
    sid = _running(wired, max_lifetime_ms=600_000, idle_ttl_ms=3_600_000)
    rec = record(wired.store, sid)
    assert rec.expires_at_ms == (rec.created_at_ms or 0) + 600_000
    # its deadline entry is capped at the hard deadline (no warning configured)
    assert wired.redis.zscore(C.DEADLINE_INDEX_KEY, sid) == rec.expires_at_ms
    # the hard deadline passes while the session is touched (its idle clock is alive)
    wired.store.touch(sid)
    wired.redis.hset(Keys(sid).record, "expires_at_ms", 1)
    wired.redis.zadd(C.DEADLINE_INDEX_KEY, {sid: 1})
    q = Enqueued()
    q.sweep(wired)
    assert q.terminates == [([sid], "max_lifetime")]
    assert wired.redis.exists(Keys(sid).alive)  # touched: the idle clock would have kept it

    assert wired.service.terminate(sid, reason="max_lifetime", fence_token="t") == "terminated"
    ended = record(wired.store, sid)
    assert (ended.status, ended.reason) == (SessionStatus.TERMINATED, "max_lifetime")
    _assert_released(wired, sid)


def test_expiring_event_goes_out_once_before_the_hard_deadline(wired: Wired) -> None:
    sid = _running(wired, max_lifetime_ms=600_000, warning_ms=60_000, idle_ttl_ms=3_600_000)
    rec = record(wired.store, sid)
    expires = rec.expires_at_ms or 0
    assert rec.expiry_warn_at_ms == expires - 60_000
    assert wired.redis.zscore(C.DEADLINE_INDEX_KEY, sid) == rec.expiry_warn_at_ms
    # the warning comes due (touched session)
    wired.redis.hset(Keys(sid).record, "expiry_warn_at_ms", 1)
    wired.redis.zadd(C.DEADLINE_INDEX_KEY, {sid: 1})
    q = Enqueued()
    q.sweep(wired)
    assert q.terminates == []  # warned, not ended
    warnings = [e for e in events.history(sid, client=wired.redis) if e.type == "expiring"]
    assert len(warnings) == 1
    now = wired.store.now_ms()
    assert 0 < warnings[0].data["in_ms"] <= expires - now + 1_000
    assert warnings[0].data["expires_at_ms"] == expires
    assert record(wired.store, sid).expiry_warn_at_ms is None
    # next due: the hard deadline (before the idle deadline, an hour away)
    assert wired.redis.zscore(C.DEADLINE_INDEX_KEY, sid) == expires
    wired.redis.zadd(C.DEADLINE_INDEX_KEY, {sid: 1})
    q.sweep(wired)
    assert (
        len([e for e in events.history(sid, client=wired.redis) if e.type == "expiring"]) == 1
    )  # once


def test_failed_spawn_releases(wired: Wired) -> None:
    sid, sealed = _spawning(wired)
    wired.cloud.refuse_create = AtlasError(
        "bad key", kind="unauthorized", status=401, provider="mock"
    )
    try:
        wired.service.spawn(sid, sealed, attempt_id="t-spawn")
    except AtlasError as exc:
        wired.service.spawn_failed(sid, exc)
    assert record(wired.store, sid).status == SessionStatus.FAILED
    _assert_released(wired, sid)


def test_failed_spawn_with_a_cleanup_owed_releases_at_once(wired: Wired) -> None:
    sid, sealed = _spawning(wired)
    wired.cloud.fail_after_create = True  # a pod exists by name; the create answered 503
    wired.cloud.refuse_create = None
    try:
        wired.service.spawn(sid, sealed, attempt_id="t-spawn")
        raise AssertionError("the spawn should have failed")
    except AtlasError as exc:
        wired.service.spawn_failed(sid, exc)
    rec = record(wired.store, sid)
    assert rec.status == SessionStatus.FAILED
    # a by-name cleanup was owed (and ran inline); it never holds the quota
    assert rec.cleanup_pending or rec.cleanup_done_at_ms is not None
    _assert_released(wired, sid)


def test_orphaned_intent_resolved_by_the_reaper_releases(wired: Wired) -> None:
    sid, _ = _spawning(wired)  # its spawn message never ran
    wired.redis.zadd(C.INTENTS_KEY, {sid: 0})  # the intent expired
    report = Enqueued().sweep(wired)
    assert sid in report.stale_intents
    assert record(wired.store, sid).status == SessionStatus.FAILED
    _assert_released(wired, sid)


def test_podless_stop_resolved_by_the_reaper_releases(wired: Wired) -> None:
    sid, _ = _spawning(wired)
    wired.store.request_stop(sid, "requested", 30_000)
    wired.service.terminate(sid, reason="requested", fence_token="t")  # deferred: no pod
    wired.redis.zadd(C.INTENTS_KEY, {sid: 0})
    Enqueued().sweep(wired)
    assert record(wired.store, sid).status == SessionStatus.TERMINATED
    _assert_released(wired, sid)


def test_terminate_after_data_loss_adoption_releases(wired: Wired) -> None:
    sid = secrets.token_hex(8)
    assert wired.store.adopt(sid, "mock", f"{PREFIX}{sid}", "pod-1", {"id": "pod-1"}, 60_000)
    _admit(wired, sid)  # whatever a reservation of that id survived
    assert wired.service.terminate(sid, reason="requested", fence_token="t") == "terminated"
    _assert_released(wired, sid)


def test_release_orphaned_frees_only_reservations_without_a_session(wired: Wired) -> None:
    sid, _ = _spawning(wired)
    ghost = secrets.token_hex(8)
    _admit(wired, ghost)  # admitted, then the spawn died before recording its session
    released = _quotas(wired).release_orphaned(C.SESSION_KEY.format(id=""), older_than_ms=0)
    assert released == [ghost]
    assert _quotas(wired).reservation(sid) is not None
    assert [u.sessions for u in _usage(wired)] == [1, 1]
    # a young reservation is left alone (its spawn may be between admission and record)
    _admit(wired, ghost)
    assert _quotas(wired).release_orphaned(C.SESSION_KEY.format(id="")) == []


def test_full_touch_caps_the_deadline_at_the_hard_lifetime(wired: Wired) -> None:
    """The full touch script (heartbeat events on) re-scores the index itself: capped."""
    from atlas_tasks.sessions.store import SessionStore

    sid = _running(wired, max_lifetime_ms=600_000, idle_ttl_ms=3_600_000)
    expires = record(wired.store, sid).expires_at_ms
    SessionStore(wired.redis, publish_heartbeats=True).touch(sid)
    assert wired.redis.zscore(C.DEADLINE_INDEX_KEY, sid) == expires


def test_price_refresh_covers_every_configured_provider_despite_failures(
    wired: Wired,
) -> None:
    from atlas_tasks.deps import Dependencies
    from atlas_tasks.providers.base import Provider
    from atlas_tasks.providers.mock import MockProvider
    from atlas_tasks.quotas import refresh_configured_prices
    from atlas_tasks.specs import GpuType

    class Catalog(MockProvider):
        def __init__(self, label: str) -> None:
            super().__init__()
            self.label = label

        def list_gpu_types(self) -> list[GpuType]:
            if self.label == "vast":
                raise AtlasError("catalog down", kind="transport")
            return [
                GpuType(
                    id=f"{self.label}-h100",
                    provider=self.label,
                    canonical="h100",
                    lowest_price_per_hour=3.0,
                )
            ]

    def factory(name: str, *, api_key: str | None = None, base_url: str | None = None) -> Provider:
        return Catalog(name)

    settings = wired.service.settings.model_copy(
        update={"reap_providers": ["runpod", "vast"], "default_provider": "lambda_labs"}
    )
    deps = Dependencies.from_client(wired.redis, settings=settings, providers=factory)
    outcome = refresh_configured_prices(deps)
    assert outcome["runpod"] == outcome["lambda_labs"] == 2  # canonical + provider id
    assert "catalog down" in str(outcome["vast"])
    assert _quotas(wired).quote("runpod", "h100", 2).hourly_usd == 6.0
    assert _quotas(wired).quote("vast", "h100").hourly_usd is None


def test_redelivered_spawn_of_a_running_session_corrects_a_missed_price(wired: Wired) -> None:
    """The worker died between finish_spawn and correct: the redelivery corrects."""
    sid, sealed = _spawning(wired)
    compute = wired.service.spawn(sid, sealed, attempt_id="t-spawn")
    _quotas(wired).correct(sid, PRICE)  # as if the correct had never run
    wired.redis.hset(Keys(sid).record, "compute", json.dumps({**compute, "cost_per_hour": 1.25}))
    wired.service.spawn(sid, sealed, attempt_id="t-spawn")  # redelivered
    reservation = _quotas(wired).reservation(sid)
    assert reservation is not None and reservation.hourly_usd == 1.25
