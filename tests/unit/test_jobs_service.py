"""The jobs service without processes: a scripted provider through ``Dependencies``, a
recording scheduler instead of Celery, a real redis-server (the Lua needs it)."""

from __future__ import annotations

import ast
import inspect
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
import redis

from atlas_tasks import events
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import (
    AtlasError,
    NotFoundError,
    ProviderError,
    RateLimitedError,
    UnsupportedError,
)
from atlas_tasks.jobs import service as service_module
from atlas_tasks.jobs import store as store_module
from atlas_tasks.jobs.service import JobService, PollResult, poll_delay_s
from atlas_tasks.jobs.store import JobRecord, JobStatus, JobStore, lease_key
from atlas_tasks.lease import Lease
from atlas_tasks.providers import Provider
from atlas_tasks.providers.base import StubProvider
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.specs import Capability, Job, JobRequest
from atlas_tasks.specs import JobStatus as ProviderJobStatus


class ScriptedProvider(StubProvider):
    """Answers get_job / read_job_stream from scripted lists; records cancels."""

    name: ClassVar[str] = "scripted"
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset(
        {Capability.SERVERLESS, Capability.JOB_STREAM_READS}
    )

    def __init__(
        self,
        statuses: list[Any] | None = None,
        stream: list[tuple[ProviderJobStatus, list[Any]]] | None = None,
        output: Any = "done",
        run_error: AtlasError | None = None,
        run_status: ProviderJobStatus = ProviderJobStatus.IN_QUEUE,
    ) -> None:
        super().__init__()
        self.statuses = list(statuses or [])
        self.stream_answers = list(stream or [])
        self.output = output
        self.run_error = run_error
        self.run_status = run_status
        self.cancelled: list[str] = []
        self.calls = 0

    def run_job(self, request: JobRequest) -> Job:
        self.calls += 1
        if self.run_error:
            raise self.run_error
        return Job(id="p1", provider=self.name, status=self.run_status)

    def get_job(self, job_id: str, *, endpoint: str) -> Job:
        self.calls += 1
        if self.cancelled:
            return Job(id=job_id, provider=self.name, status=ProviderJobStatus.CANCELLED)
        item = self.statuses.pop(0) if self.statuses else ProviderJobStatus.COMPLETED
        if isinstance(item, Exception):
            raise item
        return Job(
            id=job_id,
            provider=self.name,
            status=item,
            output=self.output if item == ProviderJobStatus.COMPLETED else None,
            error="boom" if item == ProviderJobStatus.FAILED else None,
        )

    def cancel_job(self, job_id: str, *, endpoint: str) -> None:
        self.cancelled.append(job_id)

    def read_job_stream(
        self, job_id: str, *, endpoint: str
    ) -> tuple[ProviderJobStatus | None, list[Any]]:
        self.calls += 1
        return self.stream_answers.pop(0)

    def stream_job(self, job_id: str, *, endpoint: str) -> Iterator[Any]:
        raise AssertionError("a worker must never run the blocking stream iterator")


class NoReadsProvider(ScriptedProvider):
    """Serverless without the ``job_stream_reads`` capability: read once finished."""

    name: ClassVar[str] = "no-reads"
    CAPABILITIES: ClassVar[frozenset[Capability]] = frozenset({Capability.SERVERLESS})

    def read_job_stream(
        self, job_id: str, *, endpoint: str
    ) -> tuple[ProviderJobStatus | None, list[Any]]:
        raise AssertionError("not declared: must not be called")

    def stream_job(self, job_id: str, *, endpoint: str) -> Iterator[Any]:
        return iter(["x", "y"])


class Scheduler:
    """Records the re-enqueues the service asks for (what the poll task hands Celery)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, float]] = []

    def __call__(self, job_id: str, seq: int, attempt: int, delay: float) -> None:
        self.calls.append((job_id, seq, attempt, delay))


def _deps(client: redis.Redis, provider: Provider) -> Dependencies:
    def providers(
        name: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> Provider:
        return provider

    return Dependencies.from_client(client, providers=providers)


def _service(client: redis.Redis, provider: Provider) -> JobService:
    return JobService(_deps(client, provider), rand=lambda: 0.5)


def _job(
    st: JobStore,
    job_id: str = "j1",
    *,
    stream: bool = False,
    max_ms: int = 60_000,
    provider: str = "scripted",
) -> None:
    st.create(
        JobRecord(
            id=job_id, provider=provider, endpoint="ep", stream=stream, max_duration_s=max_ms / 1000
        ),
        max_duration_ms=max_ms,
    )


def _record(st: JobStore, job_id: str = "j1") -> JobRecord:
    record = st.get(job_id)
    assert record is not None
    return record


def _run(svc: JobService, job_id: str = "j1") -> dict[str, Any]:
    return svc.run(job_id, {"endpoint": "ep", "input": {}})


def _drive(svc: JobService, job_id: str = "j1", limit: int = 20) -> list[PollResult]:
    """Run the poll chain to the end, following the scheduler like the broker would."""
    sched = Scheduler()
    results = []
    seq, attempt = 0, 0
    for n in range(limit):
        result = svc.poll(job_id, seq, attempt, owner=f"o{n}", schedule=sched)
        results.append(result)
        if result.outcome != "rescheduled":
            return results
        _, seq, attempt, _ = sched.calls[-1]
    raise AssertionError("the chain did not end")


def _events(client: redis.Redis, job_id: str = "j1") -> list[events.Event]:
    return events.history(job_id, topic="job", client=client)


def _types(client: redis.Redis, job_id: str = "j1") -> list[str]:
    return [e.type for e in _events(client, job_id)]


# --------------------------------------------------------------------------- pure parts


def test_poll_delay_backs_off_with_jitter_to_the_cap() -> None:
    assert poll_delay_s(0, rand=lambda: 0.5) == pytest.approx(0.5)
    assert poll_delay_s(1, rand=lambda: 0.5) == pytest.approx(1.0)
    assert poll_delay_s(3, rand=lambda: 0.5) == pytest.approx(4.0)
    assert poll_delay_s(4, rand=lambda: 0.5) == pytest.approx(5.0)
    assert poll_delay_s(99, rand=lambda: 0.99) <= 5.0
    lows = [poll_delay_s(0, rand=lambda: 0.0), poll_delay_s(0, rand=lambda: 1.0)]
    assert lows == [pytest.approx(0.375), pytest.approx(0.625)]


def test_record_round_trips_and_hides_the_sealed_key() -> None:
    record = JobRecord(
        id="j",
        provider="runpod",
        endpoint="ep",
        stream=True,
        status=JobStatus.COMPLETED,
        provider_job_id="p",
        poll_seq=3,
        max_duration_s=30.0,
        output={"a": [1]},
        api_key_sealed="gAAAA-sealed",
    )
    fields = record.to_hash()
    assert fields["stream"] == "1" and fields["max_duration_s"] == "30"
    assert fields["status"] == "completed" and fields["output"] == '{"a": [1]}'
    assert JobRecord.from_hash(fields) == record
    assert "sealed" not in repr(record)
    assert JobStatus.of(ProviderJobStatus.IN_PROGRESS) is JobStatus.IN_PROGRESS


def test_lua_status_strings_come_from_the_enum() -> None:
    terminal = {s for s in JobStatus if s.is_terminal}
    assert terminal == {"completed", "failed", "cancelled", "timed_out"}
    for status in terminal:
        assert f"'{status.value}'" in store_module._CLAIM
    assert "'submitting'" not in store_module._CLAIM


def test_the_service_imports_no_celery() -> None:
    tree = ast.parse(inspect.getsource(service_module))
    imported = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert not {m for m in imported if m.split(".")[0] in ("celery", "kombu")}
    assert "atlas_tasks.redis_conn" not in imported  # Redis comes from Dependencies


def test_stream_reads_are_a_declared_capability() -> None:
    stub = StubProvider()
    with pytest.raises(UnsupportedError) as caught:
        stub.read_job_stream("p1", endpoint="ep")
    assert caught.value.kind == "unsupported"
    assert "job_stream_reads" in MockProvider.capabilities()
    assert "job_stream_reads" not in StubProvider.capabilities()


# --------------------------------------------------------------------------- run


def test_run_sync_provider_finishes_at_once(redis_client: redis.Redis) -> None:
    """A provider that answers with a finished job (the mock): no poll is scheduled."""
    svc = _service(redis_client, MockProvider())
    _job(svc.store, provider="mock")
    outcome = _run(svc)
    assert outcome["outcome"] == "completed" and "poll_seq" not in outcome
    record = _record(svc.store)
    assert record.status == JobStatus.COMPLETED and record.output == {"echo": {}}
    assert record.finished_at_ms is not None
    assert _types(redis_client) == ["status", "completed"]
    assert 0 < redis_client.pttl("atlas:job:j1") <= svc.store.result_ttl_ms


def test_run_async_submits_once_then_the_chain_polls_to_the_end(redis_client: redis.Redis) -> None:
    provider = ScriptedProvider(
        [ProviderJobStatus.IN_QUEUE, ProviderJobStatus.IN_PROGRESS, ProviderJobStatus.COMPLETED],
        output={"x": 1},
    )
    svc = _service(redis_client, provider)
    _job(svc.store)
    outcome = _run(svc)
    assert outcome["outcome"] == "submitted" and outcome["poll_seq"] == 0
    assert _run(svc)["outcome"] == "submitted"  # redelivery: no second /run
    assert provider.calls == 1
    assert _record(svc.store).provider_job_id == "p1"
    results = _drive(svc)
    assert [r.outcome for r in results] == ["rescheduled", "rescheduled", "finished"]
    assert [r.next_seq for r in results[:2]] == [1, 2]  # the chain advances
    assert all(r.delay_s is not None and 0.3 < r.delay_s <= 5 for r in results[:2])
    record = _record(svc.store)
    assert record.status == JobStatus.COMPLETED and record.output == {"x": 1}
    assert record.poll_seq == 2 and record.polls == 3
    assert redis_client.exists(lease_key("j1")) == 0
    assert _types(redis_client) == ["status", "status", "status", "completed"]
    # a poll arriving after the end exits without a provider call
    calls = provider.calls
    late = svc.poll("j1", 3, 0, owner="late", schedule=Scheduler())
    assert late.outcome == "done" and provider.calls == calls


def test_submission_errors(redis_client: redis.Redis) -> None:
    refused = _service(redis_client, ScriptedProvider(run_error=RateLimitedError("429")))
    st = refused.store
    _job(st)
    with pytest.raises(RateLimitedError):  # safe to retry: the task retries
        _run(refused)
    assert st.begin_submit("j1") == "ok"  # not left "interrupted"
    st.submit_refused("j1")
    maybe = ProviderError("502 on POST", status=502)
    maybe.maybe_created = True  # type: ignore[attr-defined]
    outcome = _run(_service(redis_client, ScriptedProvider(run_error=maybe)))
    assert outcome["outcome"] == "failed" and _record(st).status == JobStatus.FAILED
    _job(st, "j2")
    st.begin_submit("j2")  # a previous attempt died mid-call
    provider = ScriptedProvider()
    assert _run(_service(redis_client, provider), "j2")["outcome"] == "failed"
    assert provider.calls == 0
    error = _record(st, "j2").error
    assert error is not None and "interrupted" in error["message"]


# --------------------------------------------------------------------------- poll


def test_lease_held_by_another_poller_exits_without_provider_calls(
    redis_client: redis.Redis,
) -> None:
    provider = ScriptedProvider([ProviderJobStatus.IN_PROGRESS] * 5)
    svc = _service(redis_client, provider)
    _job(svc.store)
    _run(svc)
    calls = provider.calls
    sched = Scheduler()
    assert svc.store.claim("j1", 0, "holder")[0] == "ok"  # another iteration is running
    assert Lease(redis_client, lease_key("j1"), 1000).holder() == "holder"
    busy = svc.poll("j1", 0, 0, owner="dup", schedule=sched)
    early = svc.poll("j1", 1, 0, owner="next", schedule=sched)
    assert (busy.outcome, early.outcome) == ("busy", "early")
    assert [c[1] for c in sched.calls] == [0, 1]  # both look again later, same seq
    assert svc.store.advance("j1", "holder", 1) == "ok"
    stale = svc.poll("j1", 0, 0, owner="dup2", schedule=sched)
    assert stale.outcome == "stale" and provider.calls == calls
    # a poller whose lease was taken over cannot release the new holder's lease
    assert svc.store.claim("j1", 1, "new")[0] == "ok"
    assert svc.store.release("j1", "holder") is False
    assert Lease(redis_client, lease_key("j1"), 1000).holder() == "new"


def test_failed_job_is_visible_with_the_provider_error(redis_client: redis.Redis) -> None:
    svc = _service(redis_client, ScriptedProvider([ProviderJobStatus.FAILED]))
    _job(svc.store)
    _run(svc)
    assert _drive(svc)[-1].status == "failed"
    record = _record(svc.store)
    assert record.status == JobStatus.FAILED and record.error is not None
    assert (record.error["kind"], record.error["message"]) == ("provider", "boom")
    failed = [e for e in _events(redis_client) if e.type == "failed"]
    assert failed[0].data["error"]["message"] == "boom"


def test_transient_errors_are_retried_then_404_fails(redis_client: redis.Redis) -> None:
    provider = ScriptedProvider(
        [RateLimitedError("slow down"), ProviderError("5xx", status=502), NotFoundError("gone")]
    )
    svc = _service(redis_client, provider)
    _job(svc.store)
    _run(svc)
    results = _drive(svc)
    assert [r.outcome for r in results] == ["rescheduled", "rescheduled", "finished"]
    record = _record(svc.store)
    assert record.status == JobStatus.FAILED and record.error is not None
    assert record.error["kind"] == "not_found" and "p1" in record.error["message"]


def test_stream_chunks_published_once_in_order(redis_client: redis.Redis) -> None:
    provider = ScriptedProvider(
        stream=[
            (ProviderJobStatus.IN_QUEUE, []),
            (ProviderJobStatus.IN_PROGRESS, ["a", "b"]),
            (ProviderJobStatus.IN_PROGRESS, []),
            (ProviderJobStatus.COMPLETED, ["c"]),
        ],
        output=["a", "b", "c"],
    )
    svc = _service(redis_client, provider)
    _job(svc.store, stream=True)
    _run(svc)
    results = _drive(svc)
    assert results[1].published_chunks == 2 and results[1].next_seq == 2
    history = _events(redis_client)
    chunks = [(e.data["seq"], e.data["chunk"]) for e in history if e.type == "output"]
    assert chunks == [(1, "a"), (2, "b"), (3, "c")]
    assert history[-1].type == "completed" and history[-1].data["output"] == ["a", "b", "c"]
    assert _record(svc.store).chunk_seq == 3


def test_stream_without_the_capability_is_read_once_finished(redis_client: redis.Redis) -> None:
    provider = NoReadsProvider(
        [ProviderJobStatus.IN_PROGRESS, ProviderJobStatus.COMPLETED, ProviderJobStatus.COMPLETED],
        output=["x", "y"],
    )
    svc = _service(redis_client, provider)
    _job(svc.store, stream=True, provider="no-reads")
    _run(svc)
    assert [r.outcome for r in _drive(svc)] == ["rescheduled", "finished"]
    chunks = [e.data["chunk"] for e in _events(redis_client) if e.type == "output"]
    assert chunks == ["x", "y"]


def test_chunks_reset_the_backoff(redis_client: redis.Redis) -> None:
    provider = ScriptedProvider(
        stream=[(ProviderJobStatus.IN_PROGRESS, []), (ProviderJobStatus.IN_PROGRESS, ["a"])]
    )
    svc = _service(redis_client, provider)
    _job(svc.store, stream=True)
    _run(svc)
    sched = Scheduler()
    svc.poll("j1", 0, 3, owner="a", schedule=sched)
    assert sched.calls[-1][2] == 4
    svc.poll("j1", 1, 4, owner="b", schedule=sched)
    assert sched.calls[-1][2] == 0 and sched.calls[-1][3] <= 0.625


def test_cancel_request_cancels_at_the_provider(redis_client: redis.Redis) -> None:
    provider = ScriptedProvider([ProviderJobStatus.IN_PROGRESS] * 5)
    svc = _service(redis_client, provider)
    _job(svc.store)
    _run(svc)
    svc.store.request_cancel("j1")
    result = svc.poll("j1", 0, 0, owner="a", schedule=Scheduler())
    assert (result.outcome, result.status) == ("finished", "cancelled")
    assert provider.cancelled == ["p1"]
    assert _types(redis_client)[-1] == "cancelled"
    assert _record(svc.store).status == JobStatus.CANCELLED


def test_cancel_before_submission_never_submits(redis_client: redis.Redis) -> None:
    provider = ScriptedProvider()
    svc = _service(redis_client, provider)
    _job(svc.store)
    svc.store.request_cancel("j1")
    assert _run(svc)["outcome"] == "cancelled"
    assert provider.calls == 0 and _record(svc.store).status == JobStatus.CANCELLED


def test_max_duration_cancels_and_times_out(redis_client: redis.Redis) -> None:
    provider = ScriptedProvider([ProviderJobStatus.IN_PROGRESS])
    svc = _service(redis_client, provider)
    _job(svc.store, max_ms=1)
    _run(svc)
    deadline = time.monotonic() + 5  # wait for the 1 ms max duration on the Redis clock
    while svc.store.now_ms() < (_record(svc.store).deadline_ms or 0):
        assert time.monotonic() < deadline
    result = svc.poll("j1", 0, 0, owner="a", schedule=Scheduler())
    assert result.status == "timed_out" and provider.cancelled == ["p1"]
    record = _record(svc.store)
    assert record.error is not None and record.error["kind"] == "timeout"
    assert "0.001s" in record.error["message"]


def test_failed_stream_job_reports_the_providers_error(redis_client: redis.Redis) -> None:
    provider = ScriptedProvider([ProviderJobStatus.FAILED], stream=[(ProviderJobStatus.FAILED, [])])
    svc = _service(redis_client, provider)
    _job(svc.store, stream=True)
    _run(svc)
    assert _drive(svc)[-1].status == "failed"
    failed = [e for e in _events(redis_client) if e.type == "failed"][0]
    assert failed.data["error"]["message"] == "boom"
