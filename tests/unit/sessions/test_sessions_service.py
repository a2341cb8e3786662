"""The session service without processes: spawn and terminate through ``Dependencies``
on a real redis-server (the store's Lua), with a scripted mock cloud. No worker, no beat."""

from __future__ import annotations

import pytest

from atlas_tasks import events
from atlas_tasks.errors import AtlasError, is_transient
from atlas_tasks.sessions.records import SessionStatus
from atlas_tasks.sessions.store import CLEANUPS_KEY, Keys
from atlas_tasks.specs import ComputeRequest
from tests.unit.sessions.sessions_support import (
    PREFIX,
    Wired,
    new_session,
    record,
    running_session,
)


def _status_events(w: Wired, sid: str) -> list[str]:
    return [
        str(e.data.get("status")) for e in events.history(sid, client=w.redis) if e.type == "status"
    ]


# ---------------------------------------------------------------------------- spawn
def test_spawn_happy_path_records_the_pod_and_starts_the_idle_clock(wired: Wired) -> None:
    sid, sealed = new_session(wired.store, idle_ttl_ms=30_000)

    compute = wired.service.spawn(sid, sealed, attempt_id="t1")

    rec = record(wired.store, sid)
    assert rec.status == SessionStatus.RUNNING and rec.compute_id == compute["id"]
    assert rec.spawn_sealed is None and not rec.create_unsettled  # in-flight payload dropped
    assert [p.id for p in wired.cloud.live()] == [compute["id"]]
    assert wired.cloud.live()[0].name == f"{PREFIX}{sid}"
    assert 0 < wired.redis.pttl(Keys(sid).alive) <= 30_000
    assert sid not in wired.store.intent_ids()
    assert wired.store.spawn_lease_holder(sid) is None  # released at once
    assert _status_events(wired, sid) == ["running"]
    # a redelivery of the finished spawn changes nothing
    assert wired.service.spawn(sid, sealed, attempt_id="t1")["id"] == compute["id"]
    assert wired.cloud.creates == 1


def test_spawn_whose_create_answered_5xx_adopts_the_pod_by_name(wired: Wired) -> None:
    sid, sealed = new_session(wired.store)
    wired.cloud.fail_after_create = True  # the pod is made, the answer is a 503

    with pytest.raises(AtlasError) as raised:
        wired.service.spawn(sid, sealed, attempt_id="t1")
    assert is_transient(raised.value)  # the task retries it
    rec = record(wired.store, sid)
    assert rec.status == SessionStatus.SPAWNING and rec.create_unsettled
    assert wired.store.spawn_lease_holder(sid) is None  # the retry may start at once

    compute = wired.service.spawn(sid, sealed, attempt_id="t1")  # the task's retry

    assert wired.cloud.creates == 1, "a retry after an ambiguous create must not create"
    assert record(wired.store, sid).status == SessionStatus.RUNNING
    assert compute["id"] == wired.cloud.live()[0].id
    assert _status_events(wired, sid) == ["running"]


def test_spawn_refused_with_4xx_fails_visibly_without_cleanup(wired: Wired) -> None:
    sid, sealed = new_session(wired.store)
    wired.cloud.refuse_create = AtlasError(
        "bad api key", kind="unauthorized", status=401, provider="mock"
    )

    with pytest.raises(AtlasError) as raised:
        wired.service.spawn(sid, sealed, attempt_id="t1")
    assert not is_transient(raised.value)  # the task gives up at once
    summary = wired.service.spawn_failed(sid, raised.value)

    assert summary["status"] == "failed" and summary["error"]["kind"] == "unauthorized"
    rec = record(wired.store, sid)
    assert rec.status == SessionStatus.FAILED and rec.error is not None
    assert rec.error["kind"] == "unauthorized" and not rec.cleanup_pending
    assert sid not in wired.store.list_ids() and sid not in wired.store.intent_ids()
    assert wired.redis.zscore(CLEANUPS_KEY, sid) is None  # nothing was made: no cleanup
    assert _status_events(wired, sid) == ["failed"]
    assert wired.cloud.creates == 0 and wired.cloud.live() == []
    # a second failure report keeps the first error and publishes nothing new
    assert wired.service.spawn_failed(sid, RuntimeError("later"))["status"] == "failed"
    assert _status_events(wired, sid) == ["failed"]


# ---------------------------------------------------------------------------- terminate
def test_terminate_ends_the_session_and_deletes_the_pod_once(wired: Wired) -> None:
    sid, pod = running_session(wired)

    assert wired.service.terminate(sid, reason="requested", fence_token="stop-1") == "terminated"

    assert wired.cloud.terminates == [pod] and wired.cloud.live() == []
    rec = record(wired.store, sid)
    assert rec.status == SessionStatus.TERMINATED and rec.reason == "requested"
    assert sid not in wired.store.list_ids()
    assert _status_events(wired, sid) == ["running", "terminated"]
    # a duplicate terminate (redelivery, reaper) makes no second provider call
    assert wired.service.terminate(sid, reason="requested", fence_token="stop-2") == "terminated"
    assert wired.cloud.terminates == [pod]


def test_terminate_of_a_pod_already_gone_counts_as_done(wired: Wired) -> None:
    sid, _ = running_session(wired)
    wired.cloud.reset_state()  # deleted behind our back: the provider answers 404

    assert wired.service.terminate(sid, reason="requested", fence_token="stop-1") == "terminated"
    assert record(wired.store, sid).status == SessionStatus.TERMINATED


def test_terminate_is_fenced_against_a_concurrent_one(wired: Wired) -> None:
    sid, pod = running_session(wired)
    # another terminate holds the fence (talking to the provider right now)
    assert wired.store.begin_terminate(sid, "requested", "other-task", 60_000).verdict == "ok"

    assert wired.service.terminate(sid, reason="requested", fence_token="mine") == "fenced"
    assert wired.cloud.terminates == []
    # the fence holder itself (a Celery retry keeps its task id) goes ahead
    assert (
        wired.service.terminate(sid, reason="requested", fence_token="other-task") == "terminated"
    )
    assert wired.cloud.terminates == [pod]


def test_idle_terminate_of_a_touched_session_does_nothing(wired: Wired) -> None:
    sid, _ = running_session(wired)
    wired.store.touch(sid)

    assert wired.service.terminate(sid, reason="idle_timeout", fence_token="t") == "alive"
    assert record(wired.store, sid).status == SessionStatus.RUNNING
    assert wired.cloud.terminates == []


def test_terminate_gave_up_publishes_and_makes_the_session_due_again(wired: Wired) -> None:
    sid, _ = running_session(wired)
    err = AtlasError("upstream 502", kind="provider", status=502, provider="mock")

    wired.service.terminate_gave_up(sid, err, retry_in_ms=1_000)

    assert wired.published.types(sid) == ["terminate_failed"]
    assert record(wired.store, sid).last_error == err.to_dict()
    assert wired.redis.zscore("atlas:deadlines", sid) is not None


def test_orphan_terminate_is_fenced_per_pod(wired: Wired) -> None:
    orphan = wired.cloud.create_compute(
        ComputeRequest(gpu="h100", image="x", name=f"{PREFIX}0123456789abcdef")
    )

    assert (
        wired.service.terminate_orphan("mock", orphan.id, orphan.name, fence_token="sweep-a")
        == "terminated"
    )
    assert (
        wired.service.terminate_orphan("mock", orphan.id, orphan.name, fence_token="sweep-b")
        == "fenced"
    )
    assert wired.cloud.terminates == [orphan.id]
    assert wired.published.types("0123456789abcdef") == ["terminating", "status"]
