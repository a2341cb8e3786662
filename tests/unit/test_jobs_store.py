"""The job store on a real redis-server: records, single-flight claims, fenced commits."""

from __future__ import annotations

import json

import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.jobs.store import (
    JobRecord,
    JobStatus,
    JobStore,
    event_keys,
    job_key,
    lease_key,
)


@pytest.fixture
def st(redis_client: redis.Redis) -> JobStore:
    return JobStore(redis_client)


def _new(st: JobStore, job_id: str = "j1") -> None:
    st.create(JobRecord(id=job_id, provider="runpod", endpoint="ep"), max_duration_ms=60_000)


def _get(st: JobStore, job_id: str = "j1") -> JobRecord:
    record = st.get(job_id)
    assert record is not None
    return record


def _submitted(st: JobStore, job_id: str = "j1") -> None:
    _new(st, job_id)
    assert st.begin_submit(job_id) == "ok"
    verdict, _ = st.commit(
        job_id,
        require_status=JobStatus.SUBMITTING,
        fields={"provider_job_id": "p1", "status": "in_queue", "submit_inflight": "0"},
    )
    assert verdict == "ok"


def test_create_sets_clock_fields_and_ttl(st: JobStore, redis_client: redis.Redis) -> None:
    now = st.create(JobRecord(id="j1", poll_seq=7), max_duration_ms=10_000, grace_ms=5_000)
    record = _get(st)
    assert record.created_at_ms == now and record.status == JobStatus.SUBMITTING
    assert record.deadline_ms == now + 10_000
    assert (record.poll_seq, record.chunk_seq, record.polls) == (0, 0, 0)  # Redis owns them
    assert 10_000 < redis_client.pttl(job_key("j1")) <= 15_000
    with pytest.raises(ValueError):
        st.create(JobRecord(id="j1"), max_duration_ms=1)
    assert st.get("nope") is None
    assert abs(st.now_ms() - now) < 5_000


def test_begin_submit_is_write_ahead(st: JobStore) -> None:
    assert st.begin_submit("missing") == "missing"
    _new(st)
    assert st.begin_submit("j1") == "ok"
    assert st.begin_submit("j1") == "interrupted"  # a redelivery must not resubmit
    st.submit_refused("j1")  # a 429: nothing reached the provider
    assert st.begin_submit("j1") == "ok"
    st.commit("j1", fields={"provider_job_id": "p1", "status": "in_queue"})
    assert st.begin_submit("j1") == "submitted"
    _new(st, "j2")
    assert st.request_cancel("j2") == ("submitting", 0)
    assert st.begin_submit("j2") == "cancel_requested"


def test_claim_single_flight(st: JobStore, redis_client: redis.Redis) -> None:
    _new(st)
    assert st.claim("j1", 0, "a")[0] == "not_ready"  # not submitted yet
    st.commit("j1", fields={"provider_job_id": "p1", "status": "in_queue"})
    assert st.claim("j1", 0, "a")[0] == "ok"
    assert redis_client.get(lease_key("j1")) == "a"
    assert st.claim("j1", 0, "b")[0] == "busy"  # duplicate of the running iteration
    assert st.claim("j1", 1, "c")[0] == "early"  # successor before the advance
    assert st.claim("j1", 5, "d")[0] == "stale"
    assert st.advance("j1", "zombie", 1) == "fenced"
    assert st.advance("j1", "a", 1, poll_errors=2) == "ok"
    assert redis_client.exists(lease_key("j1")) == 0
    record = _get(st)
    assert (record.poll_seq, record.poll_errors, record.polls) == (1, 2, 1)
    assert st.claim("j1", 0, "b")[0] == "stale"  # the duplicate comes too late
    assert st.claim("j1", 1, "c")[0] == "ok"
    st.release("j1", "c")
    # the successor adopts the chain when its predecessor died before advancing
    assert st.claim("j1", 2, "e")[0] == "ok"
    assert _get(st).poll_seq == 2
    assert st.release("j1", "x") is False and st.release("j1", "e") is True


def test_claim_done_and_missing(st: JobStore) -> None:
    assert st.claim("nope", 0, "a")[0] == "missing"
    _submitted(st)
    st.commit("j1", fields={"status": "completed"})
    assert st.claim("j1", 0, "a")[0] == "done"


def test_commit_publishes_in_the_events_wire_format(st: JobStore) -> None:
    _submitted(st)
    verdict, ids = st.commit(
        "j1",
        fields={"status": "in_progress"},
        events=[("status", {"status": "in_progress"}), ("output", {"seq": 1, "chunk": "x"})],
    )
    assert verdict == "ok" and len(ids) == 2
    history = events.history("j1", topic="job", client=st.r)
    assert [(e.type, e.data, e.id) for e in history] == [
        ("status", {"status": "in_progress"}, ids[0]),
        ("output", {"seq": 1, "chunk": "x"}, ids[1]),
    ]
    assert _get(st).status == JobStatus.IN_PROGRESS
    assert st.r.pttl(event_keys("j1")[1]) > 0


def test_commit_is_fenced_on_lease_and_status(st: JobStore) -> None:
    _submitted(st)
    assert st.claim("j1", 0, "a")[0] == "ok"
    assert st.commit("j1", owner="b", events=[("status", {"status": "x"})]) == ("fenced", [])
    assert (
        st.commit("j1", require_status=JobStatus.SUBMITTING, fields={"status": "failed"})[0]
        == "fenced"
    )
    assert events.history("j1", topic="job", client=st.r) == []
    assert (
        st.commit(
            "j1",
            owner="a",
            fields={"status": "completed"},
            release=True,
            record_ttl_ms=1234,
            stamp="finished_at_ms",
        )[0]
        == "ok"
    )
    assert st.r.exists(lease_key("j1")) == 0
    assert 0 < st.r.pttl(job_key("j1")) <= 1234
    assert _get(st).finished_at_ms
    assert st.commit("gone", fields={"status": "x"}) == ("missing", [])


def test_chunk_cursor_moves_with_the_publish(st: JobStore) -> None:
    _submitted(st)
    st.claim("j1", 0, "a")
    first = [("output", {"seq": 1, "chunk": "c1"}), ("output", {"seq": 2, "chunk": "c2"})]
    assert st.commit("j1", owner="a", events=first, chunk_cursor=(0, 2))[0] == "ok"
    # a retry of the same commit (same expected cursor) publishes nothing
    assert st.commit("j1", owner="a", events=first, chunk_cursor=(0, 2))[0] == "conflict"
    assert _get(st).chunk_seq == 2
    history = events.history("j1", topic="job", client=st.r)
    assert [e.data["seq"] for e in history] == [1, 2]


def test_request_cancel(st: JobStore) -> None:
    assert st.request_cancel("nope")[0] == "missing"
    _submitted(st)
    assert st.request_cancel("j1") == ("in_queue", 0)
    assert _get(st).cancel_requested
    st.commit("j1", fields={"status": "completed"})
    assert st.request_cancel("j1")[0] == "completed"


def test_keys_come_from_constants() -> None:
    assert job_key("x") == C.JOB_KEY.format(id="x") == "atlas:job:x"
    assert lease_key("x") == "atlas:job-lease:x"
    assert event_keys("x") == ("atlas:job-events:x", "atlas:job-events-log:x")
    assert json.loads(events.Event(session_id="x", type="t").model_dump_json())["type"] == "t"


def test_summaries_read_scanned_records_in_one_round_trip(st: JobStore) -> None:
    _new(st, "a")
    _submitted(st, "b")
    summaries = st.summaries([job_key("a"), job_key("gone"), job_key("b")])
    assert [(r.id, r.status, r.provider, r.endpoint) for r in summaries] == [
        ("a", JobStatus.SUBMITTING, "runpod", "ep"),
        ("b", JobStatus.IN_QUEUE, "runpod", "ep"),
    ]
    assert all(r.created_at_ms for r in summaries)
