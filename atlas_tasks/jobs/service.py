"""Worker-side logic of serverless jobs: submit once, poll single-flight, stream, finish.

Celery-free: :class:`JobService` takes an :class:`atlas_tasks.deps.Dependencies` (Redis,
settings, provider factory) and :mod:`atlas_tasks.tasks.jobs` calls :meth:`JobService.run`
and :meth:`JobService.poll`, handing the latter a ``schedule(job_id, seq, attempt,
delay_s)`` callable that enqueues the next poll (a countdown message), so no worker slot
ever sleeps and the service never imports Celery.

One poll iteration (see :mod:`atlas_tasks.jobs.store` for why it is single-flight):

1. claim the lease for sequence ``seq`` (duplicates exit or come back later);
2. honour a cancel request or the job's max duration (cancel at the provider);
3. read the provider once: ``get_job``, or for streaming jobs one non-blocking
   ``read_job_stream`` (capability ``job_stream_reads``), publishing new chunks with
   consecutive ``seq`` numbers in the same atomic step that moves the chunk cursor;
4. on a terminal status, store the result (for the result TTL) and publish
   ``status`` + ``completed``/``failed``/``cancelled`` exactly once;
5. otherwise schedule ``seq + 1`` after an exponential, jittered delay (0.5 s doubling
   to 5 s; back to 0.5 s while chunks flow), then advance the chain and drop the lease.

Events are published by the store's Lua commits (atomically with the record), not through
``deps.publish``: a chunk must never be published without moving the cursor.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from atlas_tasks import constants as C
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import AtlasError, NotFoundError, UnknownError, is_transient
from atlas_tasks.providers import Provider
from atlas_tasks.providers.http import is_maybe_created
from atlas_tasks.sealing import unseal
from atlas_tasks.specs import Capability, Job, JobRequest
from atlas_tasks.specs import JobStatus as ProviderJobStatus

from .store import JobRecord, JobStatus, JobStore, result_ttl_ms

log = logging.getLogger(__name__)

#: ``schedule(job_id, seq, attempt, delay_s)``: enqueue poll ``seq`` after ``delay_s``.
Scheduler = Callable[[str, int, int, float], None]


@dataclass
class PollResult:
    """What one poll call did (also the poll task's result)."""

    job_id: str
    outcome: str
    status: str | None = None
    next_seq: int | None = None
    delay_s: float | None = None
    published_chunks: int = 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def poll_delay_s(
    attempt: int,
    *,
    base: float = C.JOB_POLL_BASE_S,
    cap: float = C.JOB_POLL_CAP_S,
    rand: Callable[[], float] = random.random,
) -> float:
    """Delay before poll number ``attempt``: ``base·2^attempt`` ±25 % jitter, at most ``cap``.

    Jitter spreads a burst of jobs submitted together, so their polls do not hit the
    provider in lockstep.
    """
    delay = min(cap, base * (2 ** max(0, min(attempt, 30))))
    return float(min(cap, delay * (0.75 + 0.5 * rand())))


def job_error(job: Job, provider: str) -> dict[str, Any]:
    """The error dict of a FAILED / TIMED_OUT provider job."""
    message = job.error if isinstance(job.error, str) else json.dumps(job.error, default=str)
    if job.status == ProviderJobStatus.TIMED_OUT:
        return {
            "kind": "timeout",
            "provider": provider,
            "status": None,
            "message": message or "the provider timed the job out",
        }
    return {
        "kind": "provider",
        "provider": provider,
        "status": None,
        "message": message or "the job failed",
    }


def error_dict(error: BaseException) -> dict[str, Any]:
    """JSON-safe description of any exception (never its raw body)."""
    if isinstance(error, AtlasError):
        return error.to_dict()
    return {
        "kind": "unknown",
        "provider": None,
        "status": None,
        "message": f"{type(error).__name__}: {error}",
    }


class JobService:
    """Submission and polling of serverless jobs over explicit dependencies.

    Args:
        deps: Redis, settings and the provider factory (tests pass a fake provider).
        rand: jitter source in [0, 1) for the poll delays.
    """

    def __init__(self, deps: Dependencies, *, rand: Callable[[], float] = random.random) -> None:
        self.deps = deps
        self.rand = rand
        self.store = JobStore(deps.redis, result_ttl_ms=result_ttl_ms(deps.settings))

    def provider_for(self, record: JobRecord) -> Provider:
        """The job's provider, with its per-call key (unsealed here, in the worker)."""
        api_key = None
        if record.api_key_sealed:
            api_key = unseal(record.api_key_sealed, self.deps.settings).get("api_key")
        return self.deps.providers(record.provider, api_key=api_key)

    def poll_delay_s(self, attempt: int) -> float:
        """:func:`poll_delay_s` with this service's jitter source."""
        return poll_delay_s(attempt, rand=self.rand)

    # ------------------------------------------------------------------ finishing
    def finish_from_job(
        self,
        job_id: str,
        job: Job,
        provider: str,
        *,
        owner: str | None = None,
        require_status: JobStatus | None = None,
    ) -> str:
        """Finish with a terminal provider job's status, output or error."""
        status = JobStatus.of(job.status)
        if status == JobStatus.COMPLETED:
            return self.store.finish(
                job_id, status, owner=owner, require_status=require_status, output=job.output
            )
        if status == JobStatus.CANCELLED:
            return self.store.finish(job_id, status, owner=owner, require_status=require_status)
        return self.store.finish(
            job_id,
            status,
            owner=owner,
            require_status=require_status,
            error=job_error(job, provider),
        )

    # ------------------------------------------------------------------ submission
    def run(self, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
        """Submit a recorded job to its provider (``/run``), at most once.

        A write-ahead flag is set before the provider call. A redelivered task that finds
        it set does not submit again (``POST /run`` has no idempotency key; a second call
        could run the job twice) and fails the job instead. Returns a summary whose
        ``poll_seq``, when present, is the poll the caller must schedule.

        Raises:
            AtlasError: only when the provider certainly did not take the job (429 after
                the HTTP layer's retries, connection refused): the caller may retry.
        """
        st = self.store
        verdict = st.begin_submit(job_id)
        record = st.get(job_id)
        if verdict in ("missing", "done") or record is None:
            return {"job_id": job_id, "outcome": verdict if record else "missing"}
        if verdict == "submitted":  # redelivered after success: make sure a poller runs
            return {
                "job_id": job_id,
                "outcome": "submitted",
                "provider_job_id": record.provider_job_id,
                "poll_seq": record.poll_seq,
            }
        if verdict == "cancel_requested":
            st.finish(job_id, JobStatus.CANCELLED, require_status=JobStatus.SUBMITTING)
            return {"job_id": job_id, "outcome": "cancelled"}
        if verdict == "interrupted":
            err = {
                "kind": "unknown",
                "provider": record.provider,
                "status": None,
                "message": "submission interrupted (worker lost mid-call); not "
                "resubmitted because the provider may already run the job",
            }
            st.finish(job_id, JobStatus.FAILED, require_status=JobStatus.SUBMITTING, error=err)
            return {"job_id": job_id, "outcome": "failed", "error": err}
        try:
            p = self.provider_for(record)
            job = p.run_job(JobRequest.model_validate(request))
        except AtlasError as exc:
            if is_transient(exc) and not is_maybe_created(exc):
                st.submit_refused(job_id)
                raise
            return self.fail_submission(job_id, exc)
        except Exception as exc:  # a bug or malformed answer: the job may exist; no retry
            log.exception("job %s: unexpected error while submitting", job_id)
            return self.fail_submission(job_id, UnknownError(f"{type(exc).__name__}: {exc}"))
        status = JobStatus.of(job.status)
        if status.is_terminal:  # e.g. the mock provider answers at once
            self.finish_from_job(job_id, job, p.name, require_status=JobStatus.SUBMITTING)
            return {"job_id": job_id, "outcome": status.value, "provider_job_id": job.id}
        verdict = st.mark_submitted(job_id, job.id, status)
        if verdict != "ok":
            log.warning(
                "job %s: record %s after submission of provider job %s", job_id, verdict, job.id
            )
            return {"job_id": job_id, "outcome": verdict, "provider_job_id": job.id}
        return {
            "job_id": job_id,
            "outcome": "submitted",
            "provider_job_id": job.id,
            "status": status.value,
            "poll_seq": 0,
        }

    def fail_submission(self, job_id: str, error: BaseException) -> dict[str, Any]:
        """Record a submission that failed for good and publish ``failed``."""
        err = error_dict(error)
        self.store.finish(job_id, JobStatus.FAILED, require_status=JobStatus.SUBMITTING, error=err)
        return {"job_id": job_id, "outcome": "failed", "error": err}

    # ------------------------------------------------------------------ polling
    def read_stream_once(
        self, provider: Provider, provider_job_id: str, *, endpoint: str
    ) -> tuple[ProviderJobStatus | None, list[Any]]:
        """One non-blocking read of a job's stream: ``(status, new chunks)``.

        ``Provider.stream_job`` is a blocking iterator (it sleeps between reads), which a
        worker must not run. Providers with the ``job_stream_reads`` capability are read
        with ``read_job_stream``; any other one is read once the job has finished (its
        ``stream_job`` then returns without sleeping).
        """
        if Capability.JOB_STREAM_READS.value in provider.capabilities():
            status, chunks = provider.read_job_stream(provider_job_id, endpoint=endpoint)
            return status, list(chunks)
        job = provider.get_job(provider_job_id, endpoint=endpoint)
        if not job.status.is_terminal:
            return job.status, []
        return job.status, list(provider.stream_job(provider_job_id, endpoint=endpoint))

    def poll(
        self, job_id: str, seq: int, attempt: int, *, owner: str, schedule: Scheduler
    ) -> PollResult:
        """Run poll iteration ``seq`` of a job (see the module docstring).

        Args:
            owner: a token unique to this execution (fences every write).
            schedule: enqueues the next poll; called before the chain advances.

        Never raises for provider failures: transient ones are retried by the next poll
        (the job fails after ``JOB_POLL_MAX_ERRORS`` in a row), others fail the job.
        """
        verdict, now_ms = self.store.claim(job_id, seq, owner)
        if verdict in ("busy", "early"):
            # The running iteration (or our predecessor) finishes first; look again later.
            delay = self.poll_delay_s(attempt)
            schedule(job_id, seq, attempt, delay)
            return PollResult(job_id, verdict, next_seq=seq, delay_s=delay)
        if verdict != "ok":
            return PollResult(job_id, verdict)
        try:
            return self._iterate(job_id, seq, attempt, owner, now_ms, schedule)
        except BaseException:
            self.store.release(job_id, owner)  # let the redelivery or a duplicate take over
            raise

    def _iterate(
        self, job_id: str, seq: int, attempt: int, owner: str, now_ms: int, schedule: Scheduler
    ) -> PollResult:
        st = self.store
        record = st.get(job_id)
        if record is None:  # expired between the claim and now
            st.release(job_id, owner)
            return PollResult(job_id, "missing")
        current = record.status
        endpoint = record.endpoint
        provider_job_id = record.provider_job_id or ""
        errors = record.poll_errors
        published = 0
        next_attempt = attempt + 1
        status: JobStatus = current
        try:
            p = self.provider_for(record)
            if record.cancel_requested:
                return self._cancel(job_id, owner, p, provider_job_id, endpoint)
            if record.deadline_ms and now_ms >= record.deadline_ms:
                return self._time_out(
                    job_id, owner, p, provider_job_id, endpoint, record.max_duration_s
                )
            if record.stream:
                state, chunks = self.read_stream_once(p, provider_job_id, endpoint=endpoint)
                if chunks:
                    if st.publish_chunks(job_id, owner, record.chunk_seq, chunks) != "ok":
                        log.warning(
                            "job %s: chunk commit refused; another poller owns the job", job_id
                        )
                        return PollResult(job_id, "fenced", status=current)
                    published = len(chunks)
                    next_attempt = 0  # chunks are flowing: stay responsive
                status = JobStatus.of(state) if state is not None else current
                if state is not None and state.is_terminal:
                    # /stream says how it ended but not the output or error: /status does.
                    job = p.get_job(provider_job_id, endpoint=endpoint)
                    if not job.status.is_terminal:
                        job = Job(id=provider_job_id, provider=p.name, status=state)
                    return self._finished(job_id, owner, job, p.name, published)
            else:
                job = p.get_job(provider_job_id, endpoint=endpoint)
                if job.status.is_terminal:
                    return self._finished(job_id, owner, job, p.name, published)
                status = JobStatus.of(job.status)
            if status != current and not status.is_terminal:
                if st.set_status(job_id, owner, status) != "ok":
                    return PollResult(job_id, "fenced", status=current)
            errors = 0
        except AtlasError as exc:
            errors += 1
            if not (is_transient(exc) and errors < C.JOB_POLL_MAX_ERRORS):
                err = exc.to_dict()
                if isinstance(exc, NotFoundError):
                    err["message"] = (
                        f"provider job {provider_job_id} is unknown or its "
                        f"result expired: {exc.message}"
                    )
                verdict = st.finish(job_id, JobStatus.FAILED, owner=owner, error=err)
                return PollResult(
                    job_id, "finished" if verdict == "ok" else verdict, JobStatus.FAILED
                )
            log.warning("job %s: poll failed (%s), %d in a row; polling again", job_id, exc, errors)
            status = current
        except Exception as exc:  # a bug or an unreadable answer: count it like a 5xx
            errors += 1
            log.exception("job %s: unexpected error while polling", job_id)
            if errors >= C.JOB_POLL_MAX_ERRORS:
                verdict = st.finish(job_id, JobStatus.FAILED, owner=owner, error=error_dict(exc))
                return PollResult(
                    job_id, "finished" if verdict == "ok" else verdict, JobStatus.FAILED
                )
            status = current
        delay = self.poll_delay_s(next_attempt)
        if record.deadline_ms:  # wake up in time to enforce the max duration
            delay = min(delay, max(0.05, (record.deadline_ms - now_ms) / 1000))
        schedule(job_id, seq + 1, next_attempt, delay)
        if st.advance(job_id, owner, seq + 1, errors) != "ok":
            return PollResult(job_id, "fenced", status=status)
        return PollResult(
            job_id,
            "rescheduled",
            status=status,
            next_seq=seq + 1,
            delay_s=delay,
            published_chunks=published,
        )

    def _finished(
        self, job_id: str, owner: str, job: Job, provider: str, published: int
    ) -> PollResult:
        verdict = self.finish_from_job(job_id, job, provider, owner=owner)
        return PollResult(
            job_id,
            "finished" if verdict == "ok" else verdict,
            JobStatus.of(job.status),
            published_chunks=published,
        )

    def _cancel(
        self, job_id: str, owner: str, p: Provider, provider_job_id: str, endpoint: str
    ) -> PollResult:
        """Cancel at the provider, then record what the provider says the job became (a
        job that completed just before the cancel stays completed)."""
        try:
            p.cancel_job(provider_job_id, endpoint=endpoint)
            job = p.get_job(provider_job_id, endpoint=endpoint)
        except NotFoundError:
            job = Job(id=provider_job_id, provider=p.name, status=ProviderJobStatus.CANCELLED)
        if not job.status.is_terminal:  # RunPod answers CANCELLED; be sure whatever happens
            job = Job(id=provider_job_id, provider=p.name, status=ProviderJobStatus.CANCELLED)
        return self._finished(job_id, owner, job, p.name, 0)

    def _time_out(
        self,
        job_id: str,
        owner: str,
        p: Provider,
        provider_job_id: str,
        endpoint: str,
        max_duration_s: float | None,
    ) -> PollResult:
        """The job outlived its max duration: cancel it at the provider and fail it."""
        try:
            p.cancel_job(provider_job_id, endpoint=endpoint)
        except AtlasError as exc:  # best effort: the job is over for atlas either way
            log.warning("job %s: cancel after max duration failed: %s", job_id, exc)
        limit = "?" if max_duration_s is None else f"{max_duration_s:g}"
        err = {
            "kind": "timeout",
            "provider": None,
            "status": None,
            "message": f"job exceeded its max duration of {limit}s; cancelled",
        }
        verdict = self.store.finish(job_id, JobStatus.TIMED_OUT, owner=owner, error=err)
        return PollResult(job_id, "finished" if verdict == "ok" else verdict, JobStatus.TIMED_OUT)


__all__ = ["JobService", "PollResult", "Scheduler", "error_dict", "job_error", "poll_delay_s"]
