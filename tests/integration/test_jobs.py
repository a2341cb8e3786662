"""Serverless jobs end to end: real redis-server, Celery worker, fake cloud over HTTP.

The "must show" list of the jobs issue: async completion, streamed chunks in order with
none lost or duplicated, cancel mid-flight, a failed job's error, max duration, the sync
hard timeout and streaming of the stateless SDK, and a duplicated poll that does not
double-publish.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from typing import Any

import pytest

import atlas_tasks as atlas
from atlas_tasks import constants as C
from atlas_tasks import events, jobs
from atlas_tasks.errors import AtlasError, AtlasTimeoutError, ProviderError
from atlas_tasks.jobs import JobCancelled
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster

pytestmark = pytest.mark.integration


def _endpoint() -> str:
    return f"ep-{uuid.uuid4().hex[:8]}"


def _calls(cluster: LocalCluster, endpoint: str) -> dict[str, int]:
    return dict(cluster.cloud.state()["endpoints"].get(endpoint, {}).get("calls", {}))


def _history(job_id: str) -> list[events.Event]:
    return events.history(job_id, topic="job")


def _wait_for(predicate: Any, timeout: float, what: str, cluster: LocalCluster) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def test_async_job_completes_with_its_output(cluster: LocalCluster) -> None:
    endpoint = _endpoint()
    secret = "per-call-key-" + uuid.uuid4().hex
    config = cluster.cloud.ctx.config
    cluster.cloud.ctx.config = config.model_copy(  # accept only the per-call key
        update={"api_keys": frozenset({secret})}
    )  # only the per-call key works now
    try:
        job = jobs.submit(endpoint=endpoint, input={"output": {"answer": 42}}, api_key=secret)
        assert len(job.id) == 16 and job.provider == "runpod"
        assert job.wait(timeout=15) == {"answer": 42}
    finally:
        cluster.cloud.ctx.config = config

    info = jobs.get(job.id)
    assert info.status == "completed" and info.output == {"answer": 42}
    assert info.provider_job_id and info.provider_job_id != job.id
    assert info.created_at_ms <= info.submitted_at_ms <= info.finished_at_ms  # type: ignore
    statuses = [e.data["status"] for e in _history(job.id) if e.type == "status"]
    assert statuses[0] == "submitting" and statuses[-1] == "completed"
    assert statuses.count("completed") == 1
    assert [e.type for e in _history(job.id)][-1] == "completed"
    # the result TTL replaced the long active TTL
    ttl_ms = get_redis().pttl(C.JOB_KEY.format(id=job.id))
    assert 0 < ttl_ms <= C.DEFAULT_JOB_RESULT_TTL_MS
    # no raw secret anywhere in the record or the events
    record = get_redis().hgetall(C.JOB_KEY.format(id=job.id))
    assert record["api_key_sealed"] and all(secret not in v for v in record.values())
    assert all(secret not in str(e.data) for e in _history(job.id))
    calls = _calls(cluster, endpoint)
    assert calls["runs"] == 1 and 1 <= calls["status_calls"] <= 4, calls
    # a second wait answers from the stored result
    assert jobs.handle(job.id).wait(timeout=1) == {"answer": 42}


def test_streamed_chunks_arrive_in_order_once(cluster: LocalCluster) -> None:
    endpoint = _endpoint()
    values = [{"token": i} for i in range(25)]
    job = jobs.submit(endpoint=endpoint, input={"chunks": values, "run_time_s": 2.0}, stream=True)
    live = list(job.stream(timeout=20))
    assert live == values
    outputs = [e for e in _history(job.id) if e.type == "output"]
    assert [e.data["seq"] for e in outputs] == list(range(1, 26))
    assert [e.data["chunk"] for e in outputs] == values
    # a late subscriber gets the same chunks by replay
    assert list(jobs.handle(job.id).stream(timeout=5)) == values
    info = jobs.get(job.id)
    assert info.status == "completed" and info.chunks == 25 and info.output == values
    assert _calls(cluster, endpoint).get("stream_calls", 0) >= 2


def test_cancel_mid_flight(cluster: LocalCluster) -> None:
    endpoint = _endpoint()
    job = jobs.submit(endpoint=endpoint, input={"run_time_s": 30, "queue_delay_s": 0})
    _wait_for(lambda: jobs.get(job.id).status == "in_progress", 10, "in_progress", cluster)
    started = time.monotonic()
    job.cancel()
    with pytest.raises(JobCancelled):
        job.wait(timeout=10)
    assert time.monotonic() - started < 5
    assert jobs.get(job.id).status == "cancelled"
    assert _calls(cluster, endpoint)["cancels"] == 1
    assert cluster.cloud.state()["endpoints"][endpoint]["jobs"] == {"CANCELLED": 1}
    job.cancel()  # idempotent on a finished job
    assert _calls(cluster, endpoint)["cancels"] == 1


def test_failed_job_propagates_its_error(cluster: LocalCluster) -> None:
    job = jobs.submit(endpoint=_endpoint(), input={"fail": "CUDA out of memory", "run_time_s": 0.2})
    with pytest.raises(ProviderError) as caught:
        job.wait(timeout=15)
    assert caught.value.kind == "provider" and "CUDA out of memory" in str(caught.value)
    info = jobs.get(job.id)
    assert info.status == "failed" and info.error is not None
    assert info.error["message"] == "CUDA out of memory"
    failed = [e for e in _history(job.id) if e.type == "failed"]
    assert len(failed) == 1 and failed[0].data["error"]["kind"] == "provider"


def test_failed_stream_job_raises_after_its_chunks(cluster: LocalCluster) -> None:
    job = jobs.submit(
        endpoint=_endpoint(),
        input={"chunks": 4, "fail": "handler crashed", "run_time_s": 0.8},
        stream=True,
    )
    got: list[Any] = []
    with pytest.raises(ProviderError, match="handler crashed"):
        for chunk in job.stream(timeout=15):
            got.append(chunk)
    assert got == [f"chunk-{i}" for i in range(len(got))]  # whatever came, in order
    assert jobs.get(job.id).status == "failed"


def test_max_duration_cancels_and_times_out(cluster: LocalCluster) -> None:
    endpoint = _endpoint()
    job = jobs.submit(endpoint=endpoint, input={"run_time_s": 30}, max_duration_s=1.2)
    started = time.monotonic()
    with pytest.raises(AtlasTimeoutError):
        job.wait(timeout=10)
    assert time.monotonic() - started < 4
    assert jobs.get(job.id).status == "timed_out"
    assert _calls(cluster, endpoint)["cancels"] == 1


def test_sync_mode_hard_timeout_and_sdk_stream(cluster: LocalCluster) -> None:
    endpoint = _endpoint()
    started = time.monotonic()
    with pytest.raises(AtlasError) as caught:
        atlas.run_job(endpoint=endpoint, input={"run_time_s": 10}, mode="sync", timeout_ms=800)
    elapsed = time.monotonic() - started
    assert caught.value.kind == "timeout", caught.value
    assert elapsed < 1.5, elapsed
    done = atlas.run_job(
        endpoint=endpoint, input={"output": "ok", "run_time_s": 0.1}, mode="sync", timeout_ms=5000
    )
    assert done.status == "completed" and done.output == "ok"

    cluster.cloud.set_faults(latency_s=3.0)  # a provider that ignores every deadline
    try:
        started = time.monotonic()
        with pytest.raises(AtlasTimeoutError):
            atlas.run_job(endpoint=endpoint, input={}, mode="sync", timeout_ms=1000)
        assert time.monotonic() - started < 1.5
    finally:
        cluster.cloud.set_faults(latency_s=0.0)

    queued = atlas.run_job(endpoint=endpoint, input={"chunks": 5, "run_time_s": 0.6})
    assert list(atlas.stream_job(queued.id, endpoint=endpoint)) == [f"chunk-{i}" for i in range(5)]


def test_duplicated_poll_does_not_double_publish(cluster: LocalCluster) -> None:
    from atlas_tasks.celery_app import get_app

    app = get_app()
    endpoint = _endpoint()
    job = jobs.submit(
        endpoint=endpoint, input={"chunks": 12, "run_time_s": 2.0, "queue_delay_s": 0}, stream=True
    )
    _wait_for(lambda: jobs.get(job.id).status == "in_progress", 10, "in_progress", cluster)
    r = get_redis()
    for _ in range(3):  # the same poll, enqueued by hand, several times
        seq = int(r.hget(C.JOB_KEY.format(id=job.id), "poll_seq") or 0)
        for s in (seq, seq, seq + 1):
            app.send_task(C.TASK_JOB_POLL, args=[job.id, s, 0], queue=C.QUEUE_JOBS)
        time.sleep(0.2)
    assert job.wait(timeout=15) == [f"chunk-{i}" for i in range(12)]
    time.sleep(1.0)  # let every straggling duplicate run
    history = _history(job.id)
    seqs = [e.data["seq"] for e in history if e.type == "output"]
    assert seqs == list(range(1, 13)), seqs
    kinds = Counter(e.type for e in history)
    assert kinds["completed"] == 1, kinds
    statuses = Counter(e.data["status"] for e in history if e.type == "status")
    assert all(n == 1 for n in statuses.values()), statuses
    assert get_redis().exists(C.JOB_LEASE_KEY.format(id=job.id)) == 0
