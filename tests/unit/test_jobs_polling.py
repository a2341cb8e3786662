"""Poll/submit logic without Celery: a scripted provider, a recording scheduler, real Redis."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from atlas_tasks import events
from atlas_tasks.config import reset_settings
from atlas_tasks.errors import AtlasError, NotFoundError, ProviderError, RateLimitedError
from atlas_tasks.jobs import polling
from atlas_tasks.jobs.store import JobStore
from atlas_tasks.providers.base import StubProvider
from atlas_tasks.redis_conn import get_redis, reset_redis_clients
from atlas_tasks.specs import Job, JobRequest, JobStatus


class ScriptedProvider(StubProvider):
    """Answers get_job / read_stream from scripted lists; records cancels."""

    name: ClassVar[str] = "scripted"

    def __init__(self, statuses: list[Any] | None = None,
                 stream: list[tuple[JobStatus, list[Any]]] | None = None,
                 output: Any = "done", run_error: AtlasError | None = None) -> None:
        super().__init__()
        self.statuses = list(statuses or [])
        self.stream_answers = list(stream or [])
        self.output = output
        self.run_error = run_error
        self.cancelled: list[str] = []
        self.calls = 0

    def run_job(self, request: JobRequest) -> Job:
        self.calls += 1
        if self.run_error:
            raise self.run_error
        return Job(id="p1", provider=self.name, status=JobStatus.IN_QUEUE)

    def get_job(self, job_id: str, *, endpoint: str) -> Job:
        self.calls += 1
        if self.cancelled:
            return Job(id=job_id, provider=self.name, status=JobStatus.CANCELLED)
        item = self.statuses.pop(0) if self.statuses else JobStatus.COMPLETED
        if isinstance(item, Exception):
            raise item
        return Job(id=job_id, provider=self.name, status=item,
                   output=self.output if item == JobStatus.COMPLETED else None,
                   error="boom" if item == JobStatus.FAILED else None)

    def cancel_job(self, job_id: str, *, endpoint: str) -> None:
        self.cancelled.append(job_id)

    def read_stream(self, job_id: str, *, endpoint: str) -> tuple[JobStatus, list[Any]]:
        self.calls += 1
        return self.stream_answers.pop(0)

    def stream_job(self, job_id: str, *, endpoint: str) -> Iterator[Any]:
        raise AssertionError("a worker must never run the blocking stream iterator")


class Scheduler:
    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, float]] = []

    def __call__(self, job_id: str, seq: int, attempt: int, delay: float) -> None:
        self.calls.append((job_id, seq, attempt, delay))


@pytest.fixture
def st(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[JobStore]:
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    reset_settings()
    reset_redis_clients()
    yield JobStore(get_redis())
    reset_redis_clients()


def _job(st: JobStore, job_id: str = "j1", *, stream: bool = False,
         max_ms: int = 60_000) -> None:
    st.create(job_id, {"id": job_id, "provider": "scripted", "endpoint": "ep",
                       "status": "submitting", "stream": "1" if stream else "0",
                       "max_duration_s": str(max_ms / 1000)}, max_duration_ms=max_ms)


def _submit(st: JobStore, provider: ScriptedProvider, job_id: str = "j1") -> dict[str, Any]:
    return polling.submit_job(job_id, {"endpoint": "ep", "input": {}}, provider=provider)


def _drive(st: JobStore, provider: ScriptedProvider, job_id: str = "j1",
           limit: int = 20) -> list[polling.PollResult]:
    """Run the poll chain to the end, following the scheduler like the broker would."""
    sched = Scheduler()
    results = []
    seq, attempt = 0, 0
    for n in range(limit):
        result = polling.poll_once(job_id, seq, attempt, owner=f"o{n}", schedule=sched,
                                   provider=provider)
        results.append(result)
        if result.outcome != "rescheduled":
            return results
        _, seq, attempt, _ = sched.calls[-1]
    raise AssertionError("the chain did not end")


def _types(job_id: str = "j1") -> list[str]:
    return [e.type for e in events.history(job_id, topic="job")]


def test_poll_delay_backs_off_with_jitter_to_the_cap() -> None:
    assert polling.poll_delay_s(0, rand=lambda: 0.5) == pytest.approx(0.5)
    assert polling.poll_delay_s(1, rand=lambda: 0.5) == pytest.approx(1.0)
    assert polling.poll_delay_s(3, rand=lambda: 0.5) == pytest.approx(4.0)
    assert polling.poll_delay_s(4, rand=lambda: 0.5) == pytest.approx(5.0)
    assert polling.poll_delay_s(99, rand=lambda: 0.99) <= 5.0
    lows = [polling.poll_delay_s(0, rand=lambda: 0.0), polling.poll_delay_s(0, rand=lambda: 1.0)]
    assert lows == [pytest.approx(0.375), pytest.approx(0.625)]


def test_submit_then_poll_to_completion(st: JobStore) -> None:
    _job(st)
    provider = ScriptedProvider([JobStatus.IN_QUEUE, JobStatus.IN_PROGRESS,
                                 JobStatus.COMPLETED], output={"x": 1})
    outcome = _submit(st, provider)
    assert outcome["outcome"] == "submitted" and outcome["poll_seq"] == 0
    assert _submit(st, provider)["outcome"] == "submitted"  # redelivery: no second /run
    assert provider.calls == 1
    results = _drive(st, provider)
    assert [r.outcome for r in results] == ["rescheduled", "rescheduled", "finished"]
    assert [r.delay_s is not None and 0.3 < r.delay_s <= 5 for r in results[:2]] == [True] * 2
    record = st.get("j1")
    assert record["status"] == "completed" and record["output"] == '{"x": 1}'
    assert _types() == ["status", "status", "status", "completed"]
    assert st.r.pttl("atlas:job:j1") <= polling.result_ttl_ms()


def test_failed_job_publishes_failed_with_the_provider_error(st: JobStore) -> None:
    _job(st)
    provider = ScriptedProvider([JobStatus.FAILED])
    _submit(st, provider)
    assert _drive(st, provider)[-1].status == "failed"
    failed = [e for e in events.history("j1", topic="job") if e.type == "failed"]
    assert failed[0].data["error"]["message"] == "boom"
    assert failed[0].data["error"]["kind"] == "provider"


def test_transient_errors_are_retried_then_404_fails(st: JobStore) -> None:
    _job(st)
    provider = ScriptedProvider([RateLimitedError("slow down"), ProviderError("5xx",
                                 status=502), NotFoundError("gone")])
    _submit(st, provider)
    results = _drive(st, provider)
    assert [r.outcome for r in results] == ["rescheduled", "rescheduled", "finished"]
    assert st.get("j1")["status"] == "failed"
    error = [e for e in events.history("j1", topic="job") if e.type == "failed"][0]
    assert error.data["error"]["kind"] == "not_found"


def test_stream_chunks_published_once_in_order(st: JobStore) -> None:
    _job(st, stream=True)
    provider = ScriptedProvider(stream=[
        (JobStatus.IN_QUEUE, []), (JobStatus.IN_PROGRESS, ["a", "b"]),
        (JobStatus.IN_PROGRESS, []), (JobStatus.COMPLETED, ["c"])],
        output=["a", "b", "c"])
    _submit(st, provider)
    results = _drive(st, provider)
    assert results[1].published_chunks == 2 and results[1].next_seq == 2
    history = events.history("j1", topic="job")
    chunks = [(e.data["seq"], e.data["chunk"]) for e in history if e.type == "output"]
    assert chunks == [(1, "a"), (2, "b"), (3, "c")]
    assert history[-1].type == "completed" and history[-1].data["output"] == ["a", "b", "c"]
    assert st.get("j1")["chunk_seq"] == "3"


def test_chunks_reset_the_backoff(st: JobStore) -> None:
    _job(st, stream=True)
    provider = ScriptedProvider(stream=[(JobStatus.IN_PROGRESS, []),
                                        (JobStatus.IN_PROGRESS, ["a"])])
    _submit(st, provider)
    sched = Scheduler()
    polling.poll_once("j1", 0, 3, owner="a", schedule=sched, provider=provider)
    assert sched.calls[-1][2] == 4
    polling.poll_once("j1", 1, 4, owner="b", schedule=sched, provider=provider)
    assert sched.calls[-1][2] == 0 and sched.calls[-1][3] <= 0.625


def test_duplicate_polls_exit_or_come_back_without_provider_calls(st: JobStore) -> None:
    _job(st)
    provider = ScriptedProvider([JobStatus.IN_PROGRESS] * 5)
    _submit(st, provider)
    calls = provider.calls
    sched = Scheduler()
    assert st.claim("j1", 0, "holder")[0] == "ok"  # an iteration is running
    busy = polling.poll_once("j1", 0, 0, owner="dup", schedule=sched, provider=provider)
    early = polling.poll_once("j1", 1, 0, owner="next", schedule=sched, provider=provider)
    assert (busy.outcome, early.outcome) == ("busy", "early")
    assert [c[1] for c in sched.calls] == [0, 1]  # both look again later, same seq
    assert st.advance("j1", "holder", 1) == "ok"
    stale = polling.poll_once("j1", 0, 0, owner="dup2", schedule=sched, provider=provider)
    assert stale.outcome == "stale" and provider.calls == calls


def test_cancel_request_cancels_at_the_provider(st: JobStore) -> None:
    _job(st)
    provider = ScriptedProvider([JobStatus.IN_PROGRESS] * 5)
    _submit(st, provider)
    st.request_cancel("j1")
    result = polling.poll_once("j1", 0, 0, owner="a", schedule=Scheduler(), provider=provider)
    assert (result.outcome, result.status) == ("finished", "cancelled")
    assert provider.cancelled == ["p1"]
    assert _types()[-1] == "cancelled"


def test_cancel_before_submission_never_submits(st: JobStore) -> None:
    _job(st)
    st.request_cancel("j1")
    provider = ScriptedProvider()
    assert _submit(st, provider)["outcome"] == "cancelled"
    assert provider.calls == 0 and st.get("j1")["status"] == "cancelled"


def test_max_duration_cancels_and_times_out(st: JobStore) -> None:
    _job(st, max_ms=1)
    provider = ScriptedProvider([JobStatus.IN_PROGRESS])
    _submit(st, provider)
    import time

    time.sleep(0.01)
    result = polling.poll_once("j1", 0, 0, owner="a", schedule=Scheduler(), provider=provider)
    assert result.status == "timed_out" and provider.cancelled == ["p1"]
    failed = [e for e in events.history("j1", topic="job") if e.type == "failed"][0]
    assert failed.data["error"]["kind"] == "timeout"


def test_submission_errors(st: JobStore) -> None:
    _job(st)
    with pytest.raises(RateLimitedError):  # safe to retry: the task retries
        _submit(st, ScriptedProvider(run_error=RateLimitedError("429")))
    assert st.begin_submit("j1") == "ok"  # not left "interrupted"
    st.submit_refused("j1")
    maybe = ProviderError("502 on POST", status=502)
    maybe.maybe_created = True  # type: ignore[attr-defined]
    outcome = _submit(st, ScriptedProvider(run_error=maybe))
    assert outcome["outcome"] == "failed" and st.get("j1")["status"] == "failed"
    _job(st, "j2")
    st.begin_submit("j2")  # a previous attempt died mid-call
    provider = ScriptedProvider()
    assert _submit(st, provider, "j2")["outcome"] == "failed" and provider.calls == 0
    assert "interrupted" in st.get("j2")["error"]


def test_failed_stream_job_reports_the_providers_error(st: JobStore) -> None:
    _job(st, stream=True)
    provider = ScriptedProvider([JobStatus.FAILED], stream=[(JobStatus.FAILED, [])])
    _submit(st, provider)
    assert _drive(st, provider)[-1].status == "failed"
    failed = [e for e in events.history("j1", topic="job") if e.type == "failed"][0]
    assert failed.data["error"]["message"] == "boom"
