"""The reaper's decisions without processes: one ``SessionReaper.reap`` at a time on a real
redis-server, a scripted mock cloud, and enqueues recorded in lists. No worker, no beat."""

from __future__ import annotations

from dataclasses import dataclass, field

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.lease import Lease
from atlas_tasks.sessions.reaper import REAP_LOCK_KEY, ReapReport
from atlas_tasks.sessions.records import SessionStatus
from atlas_tasks.sessions.store import LAYOUT_KEY, Keys
from atlas_tasks.specs import ComputeRequest
from tests.unit.sessions.sessions_support import (
    PREFIX,
    Wired,
    new_session,
    record,
    running_session,
)


@dataclass
class Enqueued:
    """What a sweep would have enqueued."""

    terminates: list[tuple[list[str], str]] = field(default_factory=list)
    orphans: list[tuple[str, str, str | None]] = field(default_factory=list)
    spawns: list[tuple[str, str]] = field(default_factory=list)

    def sweep(self, w: Wired, *, scan_orphans: bool = False) -> ReapReport:
        return w.reaper.reap(
            enqueue_terminate=lambda ids, reason: self.terminates.append((list(ids), reason)),
            enqueue_orphan=lambda p, pod_id, name: self.orphans.append((p, pod_id, name)),
            enqueue_spawn=lambda sid, sealed: self.spawns.append((sid, sealed)),
            scan_orphans=scan_orphans,
        )


def _idle(w: Wired, sid: str) -> None:
    """The idle clock ran out (the alive key expired; its deadline passed)."""
    w.redis.delete(Keys(sid).alive)
    w.redis.zadd(C.DEADLINE_INDEX_KEY, {sid: 0})


# ---------------------------------------------------------------------------- idle
def test_idle_due_session_gets_a_terminate_enqueued_once(wired: Wired) -> None:
    sid, _ = running_session(wired)
    _idle(wired, sid)
    q = Enqueued()

    report = q.sweep(wired)

    assert report.due == [sid] and q.terminates == [([sid], "idle_timeout")]
    # claimed: re-scored a little ahead, so the next sweep does not enqueue it again
    assert (wired.redis.zscore(C.DEADLINE_INDEX_KEY, sid) or 0) > wired.store.now_ms()
    assert q.sweep(wired).due == [] and len(q.terminates) == 1


def test_touched_session_is_not_terminated(wired: Wired) -> None:
    sid, _ = running_session(wired)
    wired.redis.zadd(C.DEADLINE_INDEX_KEY, {sid: 0})  # a stale index entry (touch skips it)
    wired.store.touch(sid)
    q = Enqueued()

    assert q.sweep(wired).due == [] and q.terminates == []
    # the entry follows the live clock instead
    assert (wired.redis.zscore(C.DEADLINE_INDEX_KEY, sid) or 0) > wired.store.now_ms()
    assert record(wired.store, sid).status == SessionStatus.RUNNING


# ---------------------------------------------------------------------------- intents
def test_stale_intent_fails_the_session_and_settles_its_cleanup(wired: Wired) -> None:
    sid, _ = new_session(wired.store)
    wired.redis.zadd(C.INTENTS_KEY, {sid: 0})  # its spawn never finished: intent expired
    q = Enqueued()

    report = q.sweep(wired)

    assert report.stale_intents == [sid] and report.errors == []
    rec = record(wired.store, sid)
    assert rec.status == SessionStatus.FAILED and rec.error is not None
    assert rec.error["kind"] == "timeout"
    assert sid not in wired.store.list_ids() and sid not in wired.store.intent_ids()
    assert not rec.cleanup_pending and rec.cleanup_done_at_ms  # no pod found by name: done
    statuses = [
        e.data.get("status") for e in events.history(sid, client=wired.redis) if e.type == "status"
    ]
    assert statuses == ["failed"]
    assert q.terminates == [] and q.orphans == []


def test_stale_intent_of_a_stopped_spawn_ends_it_terminated(wired: Wired) -> None:
    sid, _ = new_session(wired.store)
    assert wired.service.terminate(sid, reason="requested", fence_token="stop") == "deferred"
    wired.redis.zadd(C.INTENTS_KEY, {sid: 0})

    Enqueued().sweep(wired)

    assert record(wired.store, sid).status == SessionStatus.TERMINATED


def test_stalled_spawn_is_re_sent_with_its_sealed_payload(wired: Wired) -> None:
    sid, sealed = new_session(wired.store)
    # no progress for longer than ATLAS_SPAWN_STALL_MS (4 s here): its message was lost
    wired.redis.zadd(C.INTENTS_KEY, {sid: wired.store.now_ms() + 1_000})
    q = Enqueued()

    assert q.sweep(wired).resent_spawns == [sid]
    assert q.spawns == [(sid, sealed)]


# ---------------------------------------------------------------------------- orphans
def _pod(w: Wired, name: str) -> str:
    return w.cloud.create_compute(ComputeRequest(gpu="h100", image="x", name=name)).id


def test_orphan_scan_enqueues_only_untracked_prefixed_pods(wired: Wired) -> None:
    wired.store.ensure_epoch()  # a deployment that always had its Redis (no data loss)
    tracked_sid, tracked_pod = running_session(wired)
    orphan = _pod(wired, f"{PREFIX}0123456789abcdef")  # prefixed, no record
    foreign = _pod(wired, "someone-elses-pod")  # no prefix: never touched
    spawning_sid, _ = new_session(wired.store)  # covered by its intent
    covered = _pod(wired, f"{PREFIX}{spawning_sid}")
    q = Enqueued()

    report = q.sweep(wired, scan_orphans=True)

    assert q.orphans == [("mock", orphan, f"{PREFIX}0123456789abcdef")]
    assert report.orphans == [orphan] and report.providers_scanned == ["mock"]
    enqueued = {pod_id for _, pod_id, _ in q.orphans}
    assert not enqueued & {tracked_pod, foreign, covered}
    assert record(wired.store, tracked_sid).status == SessionStatus.RUNNING
    assert wired.cloud.terminates == []  # the reaper decides; the orphan task terminates


def test_orphan_scan_is_off_without_a_prefix(wired: Wired) -> None:
    from dataclasses import replace

    from atlas_tasks.sessions.reaper import SessionReaper

    wired.store.ensure_epoch()
    _pod(wired, f"{PREFIX}0123456789abcdef")
    deps = replace(
        wired.reaper.deps,
        settings=wired.reaper.settings.model_copy(update={"reap_name_prefix": ""}),
    )
    q = Enqueued()
    report = SessionReaper(deps).reap(
        enqueue_terminate=lambda *_: None,
        enqueue_orphan=lambda *a: q.orphans.append(a),
        scan_orphans=True,
    )
    assert q.orphans == [] and report.providers_scanned == []


# ---------------------------------------------------------------------------- sweep lock
def test_a_sweep_that_outlives_its_lock_cannot_release_the_next_holders_lock(wired: Wired) -> None:
    sid, _ = running_session(wired)
    _idle(wired, sid)
    successor = Lease(wired.redis, REAP_LOCK_KEY, 60_000, owner="next-sweep")

    def slow_enqueue(ids: list[str], reason: str) -> None:
        # This sweep is still running when its lock expires; the next sweep takes it.
        wired.redis.delete(REAP_LOCK_KEY)
        assert successor.acquire()

    report = wired.reaper.reap(
        enqueue_terminate=slow_enqueue, enqueue_orphan=lambda *_: None, scan_orphans=False
    )

    assert report.due == [sid] and not report.skipped
    assert successor.held(), "the late sweep released the next sweep's lock"
    assert wired.redis.get(REAP_LOCK_KEY) == "next-sweep"
    # and while the successor holds it, another sweep is skipped, not run beside it
    assert Enqueued().sweep(wired).skipped
    assert successor.release()
    assert not Enqueued().sweep(wired).skipped


def test_the_sweep_releases_its_own_lock(wired: Wired) -> None:
    assert not Enqueued().sweep(wired).skipped
    assert wired.redis.exists(REAP_LOCK_KEY) == 0


def test_a_registry_written_in_another_key_layout_stops_the_orphan_scan(wired: Wired) -> None:
    """ATLAS_REDIS_SHARDS changed with sessions live: their records are invisible under
    the new names, so their pods must not be judged orphans."""
    wired.store.ensure_epoch()
    assert wired.store.layout_mismatch() is None  # first use: the layout is recorded
    assert wired.redis.get(wired.store.ks.key(LAYOUT_KEY)) == wired.store.layout
    other = "tagged:4" if wired.store.layout == "untagged" else "untagged"
    wired.redis.set(wired.store.ks.key(LAYOUT_KEY), other)
    orphan = _pod(wired, f"{PREFIX}0123456789abcdef")
    q = Enqueued()

    report = q.sweep(wired, scan_orphans=True)

    assert q.orphans == [] and report.providers_scanned == []
    assert any(e.startswith("ATLAS_REDIS_SHARDS") and other in e for e in report.errors)

    wired.redis.set(wired.store.ks.key(LAYOUT_KEY), wired.store.layout)  # put back
    q.sweep(wired, scan_orphans=True)
    assert q.orphans == [("mock", orphan, f"{PREFIX}0123456789abcdef")]
