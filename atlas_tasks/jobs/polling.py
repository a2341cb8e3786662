"""Worker-side logic of serverless jobs: submit once, poll single-flight, stream, finish.

No Celery here: :mod:`atlas_tasks.tasks.jobs` calls :func:`submit_job` and
:func:`poll_once` and hands them a ``schedule(job_id, seq, attempt, delay_s)`` callback
that enqueues the next poll (a countdown message), so no worker slot ever sleeps.

One poll iteration (see :mod:`atlas_tasks.jobs.store` for why it is single-flight):

1. claim the lease for sequence ``seq`` (duplicates exit or come back later);
2. honour a cancel request or the job's max duration (cancel at the provider);
3. read the provider once: ``/status``, or ``/stream`` for streaming jobs, publishing
   new chunks with consecutive ``seq`` numbers in the same atomic step that moves the
   chunk cursor;
4. on a terminal status, store the result (for the result TTL) and publish
   ``status`` + ``completed``/``failed``/``cancelled`` exactly once;
5. otherwise schedule ``seq + 1`` after an exponential, jittered delay (0.5 s doubling
   to 5 s; back to 0.5 s while chunks flow), then advance the chain and drop the lease.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from atlas_tasks import constants as C
from atlas_tasks.config import get_settings
from atlas_tasks.errors import AtlasError, NotFoundError, UnknownError, is_transient
from atlas_tasks.providers import Provider, get_provider
from atlas_tasks.providers.http import is_maybe_created
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sealing import unseal
from atlas_tasks.specs import Job, JobRequest, JobStatus

from .store import TERMINAL_STATUSES, JobStore


def provider_for(record: dict[str, str]) -> Provider:
    """The provider a job was submitted to, with its per-call key if any (was
    ``atlas_tasks.lifecycle.provider_for``, which sessions replaced by their service)."""
    api_key = None
    if record.get("api_key_sealed"):
        api_key = unseal(record["api_key_sealed"]).get("api_key")
    return get_provider(record["provider"], api_key=api_key,
                        base_url=record.get("base_url") or None)


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


def store() -> JobStore:
    """The job store on ``ATLAS_REDIS_URL``."""
    return JobStore(get_redis())


def poll_delay_s(attempt: int, *, base: float = C.JOB_POLL_BASE_S,
                 cap: float = C.JOB_POLL_CAP_S,
                 rand: Callable[[], float] = random.random) -> float:
    """Delay before poll number ``attempt``: ``base·2^attempt`` ±25 % jitter, at most ``cap``.

    Jitter spreads a burst of jobs submitted together, so their polls do not hit the
    provider in lockstep.
    """
    delay = min(cap, base * (2 ** max(0, min(attempt, 30))))
    return float(min(cap, delay * (0.75 + 0.5 * rand())))


def result_ttl_ms() -> int:
    """How long a finished job's record stays readable (setting or constant default)."""
    value = getattr(get_settings(), "job_result_ttl_ms", None)
    return int(value) if isinstance(value, int) and value > 0 else C.DEFAULT_JOB_RESULT_TTL_MS


def status_of(job: Job) -> str:
    """Atlas status string of a provider job."""
    return JobStatus(job.status).value


def job_error(job: Job, provider: str) -> dict[str, Any]:
    """The error dict of a FAILED / TIMED_OUT provider job."""
    message = job.error if isinstance(job.error, str) else json.dumps(job.error, default=str)
    if job.status == JobStatus.TIMED_OUT:
        return {"kind": "timeout", "provider": provider, "status": None,
                "message": message or "the provider timed the job out"}
    return {"kind": "provider", "provider": provider, "status": None,
            "message": message or "the job failed"}


def error_dict(error: BaseException) -> dict[str, Any]:
    """JSON-safe description of any exception (never its raw body)."""
    if isinstance(error, AtlasError):
        return error.to_dict()
    return {"kind": "unknown", "provider": None, "status": None,
            "message": f"{type(error).__name__}: {error}"}


# --------------------------------------------------------------------------- finishing


def finish(
    st: JobStore,
    job_id: str,
    status: str,
    *,
    owner: str | None = None,
    require_status: str | None = None,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> str:
    """Store the final result (kept for the result TTL) and publish the final events in
    one fenced step. Returns the commit verdict (``ok``, ``fenced``, ``missing``)."""
    fields = {"status": status, "submit_inflight": "0"}
    final: tuple[str, dict[str, Any]]
    if status == "completed":
        fields["output"] = json.dumps(output, default=str)
        final = ("completed", {"output": output})
    elif status == "cancelled":
        final = ("cancelled", {"status": status})
    else:
        err = error or {"kind": "unknown", "message": f"job {status}"}
        fields["error"] = json.dumps(err, default=str)
        final = ("failed", {"status": status, "error": err})
    verdict, _ = st.commit(job_id, owner=owner, require_status=require_status, fields=fields,
                           events=[("status", {"status": status}), final],
                           record_ttl_ms=result_ttl_ms(), release=owner is not None,
                           stamp="finished_at_ms")
    return verdict


def finish_from_job(st: JobStore, job_id: str, job: Job, provider: str, *,
                    owner: str | None = None, require_status: str | None = None) -> str:
    """:func:`finish` with a terminal provider job's status, output or error."""
    status = status_of(job)
    if status == "completed":
        return finish(st, job_id, status, owner=owner, require_status=require_status,
                      output=job.output)
    if status == "cancelled":
        return finish(st, job_id, status, owner=owner, require_status=require_status)
    return finish(st, job_id, status, owner=owner, require_status=require_status,
                  error=job_error(job, provider))


# --------------------------------------------------------------------------- submission


def submit_job(job_id: str, request: dict[str, Any], *,
               provider: Provider | None = None) -> dict[str, Any]:
    """Submit a recorded job to its provider (``/run``), at most once.

    A write-ahead flag is set before the provider call. A redelivered task that finds it
    set does not submit again (``POST /run`` has no idempotency key; a second call could
    run the job twice) and fails the job instead. Returns a summary whose ``poll_seq``,
    when present, is the poll the caller must schedule.

    Raises:
        AtlasError: only when the provider certainly did not take the job (429 after the
            HTTP layer's retries, connection refused): the caller may retry.
    """
    st = store()
    verdict = st.begin_submit(job_id)
    record = st.get(job_id)
    if verdict in ("missing", "done"):
        return {"job_id": job_id, "outcome": verdict}
    if verdict == "submitted":  # redelivered after success: make sure a poller runs
        return {"job_id": job_id, "outcome": "submitted",
                "provider_job_id": record.get("provider_job_id"),
                "poll_seq": int(record.get("poll_seq") or 0)}
    if verdict == "cancel_requested":
        finish(st, job_id, "cancelled", require_status="submitting")
        return {"job_id": job_id, "outcome": "cancelled"}
    if verdict == "interrupted":
        err = {"kind": "unknown", "provider": record.get("provider"), "status": None,
               "message": "submission interrupted (worker lost mid-call); not resubmitted "
                          "because the provider may already run the job"}
        finish(st, job_id, "failed", require_status="submitting", error=err)
        return {"job_id": job_id, "outcome": "failed", "error": err}
    try:
        p = provider or provider_for(record)
        job = p.run_job(JobRequest.model_validate(request))
    except AtlasError as exc:
        if is_transient(exc) and not is_maybe_created(exc):
            st.submit_refused(job_id)
            raise
        return fail_submission(job_id, exc)
    except Exception as exc:  # a bug or malformed answer: the job may exist; do not retry
        log.exception("job %s: unexpected error while submitting", job_id)
        return fail_submission(job_id, UnknownError(f"{type(exc).__name__}: {exc}"))
    if job.status.is_terminal:  # e.g. the mock provider answers at once
        finish_from_job(st, job_id, job, p.name, require_status="submitting")
        return {"job_id": job_id, "outcome": status_of(job), "provider_job_id": job.id}
    status = status_of(job)
    verdict, _ = st.commit(
        job_id, require_status="submitting",
        fields={"provider_job_id": job.id, "status": status, "submit_inflight": "0"},
        events=[("status", {"status": status, "provider_job_id": job.id})],
        stamp="submitted_at_ms")
    if verdict != "ok":
        log.warning("job %s: record %s after submission of provider job %s", job_id,
                    verdict, job.id)
        return {"job_id": job_id, "outcome": verdict, "provider_job_id": job.id}
    return {"job_id": job_id, "outcome": "submitted", "provider_job_id": job.id,
            "status": status, "poll_seq": 0}


def fail_submission(job_id: str, error: BaseException) -> dict[str, Any]:
    """Record a submission that failed for good and publish ``failed``."""
    err = error_dict(error)
    finish(store(), job_id, "failed", require_status="submitting", error=err)
    return {"job_id": job_id, "outcome": "failed", "error": err}


# --------------------------------------------------------------------------- polling


def read_stream_once(provider: Provider, job_id: str, *, endpoint: str
                     ) -> tuple[JobStatus | None, list[Any]]:
    """One non-blocking read of a job's stream: ``(status, new chunks)``.

    ``Provider.stream_job`` is a blocking iterator (it sleeps between reads), which a
    worker must not run. Providers may offer ``read_stream(job_id, endpoint=)``; RunPod
    is read through its runtime client (one ``GET /stream``); any other provider is read
    once it has finished (its ``stream_job`` then returns without sleeping).
    """
    reader = getattr(provider, "read_stream", None)
    if callable(reader):
        status, chunks = reader(job_id, endpoint=endpoint)
        return status, list(chunks)
    runtime = getattr(getattr(provider, "clients", None), "runtime", None)
    if provider.name == "runpod" and runtime is not None:
        from atlas_tasks.providers.runpod import serverless, translate

        answer = runtime.call("GET", serverless.job_path(endpoint, "stream", job_id))
        return translate.stream_chunks(answer.data)
    job = provider.get_job(job_id, endpoint=endpoint)
    if not job.status.is_terminal:
        return job.status, []
    return job.status, list(provider.stream_job(job_id, endpoint=endpoint))


def poll_once(
    job_id: str,
    seq: int,
    attempt: int,
    *,
    owner: str,
    schedule: Scheduler,
    provider: Provider | None = None,
    rand: Callable[[], float] = random.random,
) -> PollResult:
    """Run poll iteration ``seq`` of a job (see the module docstring).

    Args:
        owner: a token unique to this execution (fences every write).
        schedule: enqueues the next poll; called before the chain advances.
        provider: override the provider rebuilt from the record (tests).

    Never raises for provider failures: transient ones are retried by the next poll (the
    job fails after ``JOB_POLL_MAX_ERRORS`` in a row), others fail the job.
    """
    st = store()
    verdict, now_ms = st.claim(job_id, seq, owner)
    if verdict in ("busy", "early"):
        # The running iteration (or our predecessor) finishes first; look again later.
        delay = poll_delay_s(attempt, rand=rand)
        schedule(job_id, seq, attempt, delay)
        return PollResult(job_id, verdict, next_seq=seq, delay_s=delay)
    if verdict != "ok":
        return PollResult(job_id, verdict)
    try:
        return _iterate(st, job_id, seq, attempt, owner, now_ms, schedule, provider, rand)
    except BaseException:
        st.release(job_id, owner)  # let the redelivery (or a duplicate) take over at once
        raise


def _iterate(st: JobStore, job_id: str, seq: int, attempt: int, owner: str, now_ms: int,
             schedule: Scheduler, provider: Provider | None,
             rand: Callable[[], float]) -> PollResult:
    record = st.get(job_id)
    current = record.get("status", "")
    endpoint = record.get("endpoint", "")
    provider_job_id = record.get("provider_job_id", "")
    errors = int(record.get("poll_errors") or 0)
    published = 0
    next_attempt = attempt + 1
    try:
        p = provider or provider_for(record)
        if record.get("cancel_requested") == "1":
            return _cancel(st, job_id, owner, p, provider_job_id, endpoint)
        deadline_ms = int(record.get("deadline_ms") or 0)
        if deadline_ms and now_ms >= deadline_ms:
            return _time_out(st, job_id, owner, p, provider_job_id, endpoint,
                             record.get("max_duration_s", "?"))
        if record.get("stream") == "1":
            state, chunks = read_stream_once(p, provider_job_id, endpoint=endpoint)
            if chunks:
                published = _publish_chunks(st, job_id, owner, int(record.get("chunk_seq")
                                                                    or 0), chunks)
                if published < 0:
                    return PollResult(job_id, "fenced", status=current)
                next_attempt = 0  # chunks are flowing: stay responsive
            status = state.value if state is not None else current
            if state is not None and state.is_terminal:
                # /stream says how it ended but not the output or error: /status does.
                job = p.get_job(provider_job_id, endpoint=endpoint)
                if not job.status.is_terminal:
                    job = Job(id=provider_job_id, provider=p.name, status=state)
                return _finished(st, job_id, owner, job, p.name, published)
        else:
            job = p.get_job(provider_job_id, endpoint=endpoint)
            if job.status.is_terminal:
                return _finished(st, job_id, owner, job, p.name, published)
            status = status_of(job)
        if status != current and status not in TERMINAL_STATUSES:
            verdict, _ = st.commit(job_id, owner=owner, fields={"status": status},
                                   events=[("status", {"status": status})])
            if verdict != "ok":
                return PollResult(job_id, "fenced", status=current)
        errors = 0
    except AtlasError as exc:
        errors += 1
        if not (is_transient(exc) and errors < C.JOB_POLL_MAX_ERRORS):
            err = exc.to_dict()
            if isinstance(exc, NotFoundError):
                err["message"] = (f"provider job {provider_job_id} is unknown or its result "
                                  f"expired: {exc.message}")
            verdict = finish(st, job_id, "failed", owner=owner, error=err)
            return PollResult(job_id, "finished" if verdict == "ok" else verdict, "failed")
        log.warning("job %s: poll failed (%s), %d in a row; polling again", job_id, exc,
                    errors)
        status = current
    except Exception as exc:  # a bug or an unreadable answer: count it like a 5xx
        errors += 1
        log.exception("job %s: unexpected error while polling", job_id)
        if errors >= C.JOB_POLL_MAX_ERRORS:
            verdict = finish(st, job_id, "failed", owner=owner, error=error_dict(exc))
            return PollResult(job_id, "finished" if verdict == "ok" else verdict, "failed")
        status = current
    delay = poll_delay_s(next_attempt, rand=rand)
    deadline_ms = int(record.get("deadline_ms") or 0)
    if deadline_ms:  # wake up in time to enforce the max duration
        delay = min(delay, max(0.05, (deadline_ms - now_ms) / 1000))
    schedule(job_id, seq + 1, next_attempt, delay)
    if st.advance(job_id, owner, seq + 1, errors) != "ok":
        return PollResult(job_id, "fenced", status=status)
    return PollResult(job_id, "rescheduled", status=status, next_seq=seq + 1, delay_s=delay,
                      published_chunks=published)


def _publish_chunks(st: JobStore, job_id: str, owner: str, cursor: int,
                    chunks: list[Any]) -> int:
    """Publish ``chunks`` as ``output`` events ``cursor+1..`` and move the cursor, in one
    fenced Lua call. Returns how many were published (-1 when fenced)."""
    events = [("output", {"seq": cursor + i + 1, "chunk": chunk})
              for i, chunk in enumerate(chunks)]
    verdict, _ = st.commit(job_id, owner=owner, events=events,
                           chunk_cursor=(cursor, cursor + len(chunks)))
    if verdict != "ok":
        log.warning("job %s: chunk commit %s; another poller owns the job", job_id, verdict)
        return -1
    return len(chunks)


def _finished(st: JobStore, job_id: str, owner: str, job: Job, provider: str,
              published: int) -> PollResult:
    verdict = finish_from_job(st, job_id, job, provider, owner=owner)
    return PollResult(job_id, "finished" if verdict == "ok" else verdict, status_of(job),
                      published_chunks=published)


def _cancel(st: JobStore, job_id: str, owner: str, p: Provider, provider_job_id: str,
            endpoint: str) -> PollResult:
    """Cancel at the provider, then record what the provider says the job became (a job
    that completed just before the cancel stays completed)."""
    try:
        p.cancel_job(provider_job_id, endpoint=endpoint)
        job = p.get_job(provider_job_id, endpoint=endpoint)
    except NotFoundError:
        job = Job(id=provider_job_id, provider=p.name, status=JobStatus.CANCELLED)
    if not job.status.is_terminal:  # RunPod answers CANCELLED; be sure whatever happens
        job = Job(id=provider_job_id, provider=p.name, status=JobStatus.CANCELLED)
    return _finished(st, job_id, owner, job, p.name, 0)


def _time_out(st: JobStore, job_id: str, owner: str, p: Provider, provider_job_id: str,
              endpoint: str, max_duration: str) -> PollResult:
    """The job outlived its max duration: cancel it at the provider and fail it."""
    try:
        p.cancel_job(provider_job_id, endpoint=endpoint)
    except AtlasError as exc:  # best effort: the job is over for atlas either way
        log.warning("job %s: cancel after max duration failed: %s", job_id, exc)
    err = {"kind": "timeout", "provider": None, "status": None,
           "message": f"job exceeded its max duration of {max_duration}s; cancelled"}
    verdict = finish(st, job_id, "timed_out", owner=owner, error=err)
    return PollResult(job_id, "finished" if verdict == "ok" else verdict, "timed_out")


__all__ = [
    "PollResult",
    "Scheduler",
    "fail_submission",
    "finish",
    "poll_delay_s",
    "poll_once",
    "read_stream_once",
    "result_ttl_ms",
    "store",
    "submit_job",
]
