"""Caller API of atlas_tasks.jobs: validation, records, enqueues, wait/stream from events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from celery import Celery

from atlas_tasks import celery_app, events, jobs
from atlas_tasks import constants as C
from atlas_tasks.celery_app import build_config
from atlas_tasks.config import get_settings, reset_settings
from atlas_tasks.errors import (
    AtlasTimeoutError,
    NotFoundError,
    ProviderError,
    TransportError,
    UnsupportedError,
    ValidationError,
)
from atlas_tasks.jobs import JobCancelled, JobStatus
from atlas_tasks.jobs.store import JobStore
from atlas_tasks.providers.base import StubProvider
from atlas_tasks.providers.registry import register_provider
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.sealing import generate_key


@pytest.fixture
def sent(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """Point settings at the test Redis and capture send_task calls."""
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("ATLAS_SECRET_KEY", generate_key())
    monkeypatch.setenv("ATLAS_DEFAULT_PROVIDER", "runpod")
    reset_settings()
    reset_redis_clients()
    calls: list[dict[str, Any]] = []

    class FakeApp:
        def send_task(self, name: str, args: Any = None, **options: Any) -> None:
            calls.append({"name": name, "args": args, **options})

    monkeypatch.setattr(celery_app, "get_app", FakeApp)
    yield calls
    reset_redis_clients()


def _store() -> JobStore:
    return JobStore(get_redis())


def _finish(st: JobStore, job_id: str, status: str, **kwargs: Any) -> None:
    assert (
        st.finish(job_id, JobStatus(status), require_status=JobStatus.SUBMITTING, **kwargs) == "ok"
    )


def test_every_job_task_is_routed_to_the_jobs_queue() -> None:
    app = Celery("routes-test")
    app.conf.update(task_routes=build_config(get_settings())["task_routes"])
    for name in (C.TASK_JOB_RUN, C.TASK_JOB_POLL):
        assert app.amqp.router.route({}, name)["queue"].name == C.QUEUE_JOBS


def test_submit_records_publishes_and_enqueues(sent: list[dict[str, Any]]) -> None:
    job = jobs.submit(
        endpoint="ep",
        input={"prompt": "hi"},
        stream=True,
        max_duration_s=30,
        api_key="sk-secret-123",
    )
    assert repr(job) == f"JobHandle(id={job.id!r}, provider='runpod', endpoint='ep')"
    [call] = sent
    assert call["name"] == C.TASK_JOB_RUN and "queue" not in call  # task_routes decide
    assert call["args"][0] == job.id and call["args"][1]["input"] == {"prompt": "hi"}
    assert "sk-secret" not in str(call)  # the key never travels in the message
    assert call["argsrepr"] == repr((job.id, "<request>"))
    info = jobs.get(job.id)
    assert (info.status, info.stream, info.endpoint, info.provider) == (
        "submitting",
        True,
        "ep",
        "runpod",
    )
    assert info.deadline_ms - info.created_at_ms == 30_000  # type: ignore[operator]
    record = get_redis().hgetall(C.JOB_KEY.format(id=job.id))
    assert "sk-secret" not in str(record) and record["api_key_sealed"]
    [event] = events.history(job.id, topic="job")
    assert event.data["status"] == "submitting"


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input": 1}, "endpoint"),
        ({"endpoint": "ep", "max_duration_s": 0}, "max_duration_s"),
        ({"endpoint": "ep", "max_duration_s": True}, "max_duration_s"),
        ({"endpoint": "ep", "stream": "yes"}, "stream"),
        ({"endpoint": "ep", "input": {1, 2}}, "input"),
        ({"endpoint": "ep", "provider": "nope"}, "provider"),
        ({"endpoint": "ep", "policy": "fast"}, "policy"),
    ],
)
def test_submit_validation_names_the_field(
    sent: list[dict[str, Any]], kwargs: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        jobs.submit(**kwargs)
    assert caught.value.field == field
    assert sent == []


class NoJobsProvider(StubProvider):
    name: ClassVar[str] = "test-no-jobs"


def test_submit_needs_a_serverless_provider(sent: list[dict[str, Any]]) -> None:
    register_provider("test-no-jobs", NoJobsProvider)
    with pytest.raises(UnsupportedError):
        jobs.submit(endpoint="ep", provider="test-no-jobs")
    assert sent == []


def test_enqueue_failure_fails_the_job(
    sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    class BrokenApp:
        def send_task(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("broker down")

    monkeypatch.setattr(celery_app, "get_app", BrokenApp)
    with pytest.raises(TransportError):
        jobs.submit(endpoint="ep")
    [job_id] = [k.split(":")[-1] for k in get_redis().scan_iter("atlas:job:*")]
    assert jobs.get(job_id).status == "failed"


def test_get_and_cancel_unknown(sent: list[dict[str, Any]]) -> None:
    with pytest.raises(NotFoundError):
        jobs.get("nope")
    with pytest.raises(NotFoundError):
        jobs.cancel("nope")
    with pytest.raises(ValidationError):
        jobs.get("")


def test_cancel_flags_and_kicks_a_poll(sent: list[dict[str, Any]]) -> None:
    job = jobs.submit(endpoint="ep")
    job.cancel()  # still submitting: the run task sees the flag, no poll needed
    assert len(sent) == 1 and jobs.get(job.id).cancel_requested
    _store().commit(
        job.id, fields={"status": "in_progress", "provider_job_id": "p", "poll_seq": "3"}
    )
    job.cancel()
    assert sent[-1]["name"] == C.TASK_JOB_POLL and sent[-1]["args"] == [job.id, 3, 0]
    _store().commit(job.id, fields={"status": "completed"})
    job.cancel()  # finished: nothing to do
    assert len(sent) == 2


def test_wait_returns_output_from_events_and_record(sent: list[dict[str, Any]]) -> None:
    job = jobs.submit(endpoint="ep")

    def complete() -> None:
        time.sleep(0.3)
        _finish(_store(), job.id, "completed", output={"y": 2})

    threading.Thread(target=complete).start()
    assert job.wait(timeout=5) == {"y": 2}
    assert job.wait(timeout=0.1) == {"y": 2}  # from the stored result


def test_wait_raises_the_jobs_error_or_times_out(sent: list[dict[str, Any]]) -> None:
    job = jobs.submit(endpoint="ep")
    started = time.monotonic()
    with pytest.raises(AtlasTimeoutError):
        job.wait(timeout=0.5)
    assert 0.4 < time.monotonic() - started < 1.5
    _finish(
        _store(),
        job.id,
        "failed",
        error={"kind": "provider", "provider": "runpod", "message": "boom"},
    )
    with pytest.raises(ProviderError, match="boom"):
        job.wait(timeout=1)
    other = jobs.submit(endpoint="ep")
    _finish(_store(), other.id, "cancelled")
    with pytest.raises(JobCancelled):
        other.wait(timeout=1)
    with pytest.raises(JobCancelled):
        list(other.stream(timeout=1))


def test_stream_replays_then_follows_and_never_repeats(sent: list[dict[str, Any]]) -> None:
    job = jobs.submit(endpoint="ep", stream=True)
    st = _store()
    st.commit(
        job.id,
        events=[
            ("output", {"seq": 1, "chunk": "a"}),
            ("output", {"seq": 2, "chunk": "b"}),
            ("output", {"seq": 2, "chunk": "b"}),
        ],
    )  # a stray duplicate

    def later() -> None:
        time.sleep(0.3)
        st.commit(job.id, events=[("output", {"seq": 3, "chunk": "c"})])
        _finish(st, job.id, "completed", output="abc")

    threading.Thread(target=later).start()
    assert list(job.stream(timeout=5)) == ["a", "b", "c"]
    plain = jobs.submit(endpoint="ep")
    _finish(st, plain.id, "completed", output="whole")
    assert list(plain.stream(timeout=1)) == ["whole"]  # non-streaming: the output once
