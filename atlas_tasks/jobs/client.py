"""Serverless inference jobs as Celery tasks — the caller-side API.

``submit`` records the job in Redis, publishes ``status: submitting`` and enqueues
``atlas.jobs.run``; a worker submits it to the provider and a self-rescheduling
``atlas.jobs.poll`` follows it to the end (see :mod:`atlas_tasks.jobs.service`). Nothing
here calls a provider: the caller only reads Redis and follows the job's events, so any
web node can wait on, stream or cancel any job.

Example (a Django view)::

    from atlas_tasks import jobs

    job = jobs.submit(endpoint="vllm-abc123", input={"prompt": "Hello"}, stream=True)
    for chunk in job.stream(timeout=120):   # replayed from the start, then live
        send_to_browser(chunk)
    jobs.get(job.id).status                 # "completed"

Events (topic ``job`` of :mod:`atlas_tasks.events`, id = the job id): ``status``
(``submitting`` ``in_queue`` ``in_progress`` ``completed`` ``failed`` ``cancelled``
``timed_out``), ``output`` (``{"seq": n, "chunk": value}``, each chunk once, in order),
``completed`` (``{"output": ...}``), ``failed`` (``{"error": {...}}``) and ``cancelled``.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Generator, Iterator
from contextlib import closing
from typing import Any, cast

from pydantic import BaseModel

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.config import get_settings, resolve_provider_name
from atlas_tasks.errors import (
    AtlasError,
    AtlasTimeoutError,
    NotFoundError,
    TransportError,
    UnknownError,
    UnsupportedError,
    validation_error,
)
from atlas_tasks.events import Event
from atlas_tasks.providers import Provider, provider_class
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.sealing import seal
from atlas_tasks.specs import build_job_request

from .store import JobRecord, JobStatus, JobStore, event_keys, result_ttl_ms

#: Event types that end a job's event stream.
FINAL_EVENTS = ("completed", "failed", "cancelled")


class JobCancelled(UnknownError):
    """The job was cancelled before it finished (``wait``/``stream`` raise it)."""


class JobInfo(BaseModel):
    """A job's record as :func:`get` returns it (times are ms since the epoch, Redis clock)."""

    id: str
    provider: str
    endpoint: str
    status: JobStatus
    stream: bool = False
    provider_job_id: str | None = None
    created_at_ms: int | None = None
    submitted_at_ms: int | None = None
    finished_at_ms: int | None = None
    updated_at_ms: int | None = None
    deadline_ms: int | None = None
    polls: int = 0
    chunks: int = 0
    cancel_requested: bool = False
    output: Any = None
    error: dict[str, Any] | None = None

    @property
    def done(self) -> bool:
        """True once the job reached a terminal status."""
        return self.status.is_terminal

    @classmethod
    def from_record(cls, record: JobRecord) -> JobInfo:
        """The caller's view of a stored record (no sealed key, no poller internals)."""
        return cls(
            id=record.id,
            provider=record.provider,
            endpoint=record.endpoint,
            status=record.status,
            stream=record.stream,
            provider_job_id=record.provider_job_id,
            created_at_ms=record.created_at_ms,
            submitted_at_ms=record.submitted_at_ms,
            finished_at_ms=record.finished_at_ms,
            updated_at_ms=record.updated_at_ms,
            deadline_ms=record.deadline_ms,
            polls=record.polls,
            chunks=record.chunk_seq,
            cancel_requested=record.cancel_requested,
            output=record.output,
            error=record.error,
        )


def _store() -> JobStore:
    settings = get_settings()
    return JobStore(get_redis(settings.redis_url), result_ttl_ms=result_ttl_ms(settings))


def _error_of(job_id: str, status: str, error: dict[str, Any] | None) -> AtlasError:
    if status == JobStatus.CANCELLED:
        return JobCancelled(f"job {job_id} was cancelled")
    return AtlasError.from_dict(error or {"kind": "unknown", "message": f"job {job_id} {status}"})


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def follow(
    job_id: str, *, timeout: float | None = None, after: str | None = None
) -> Generator[Event, None, None]:
    """Yield a job's recorded events, then live ones, until a final event or ``timeout``
    seconds in total (the iterator just ends; callers decide what that means)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    r = get_redis()
    channel, _ = event_keys(job_id)
    pubsub = r.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)  # before reading history: nothing falls in between
    last = _stream_id(after) if after else (0, 0)
    try:
        for event in events.history(job_id, topic="job", client=r, after=after):
            last = _stream_id(cast(str, event.id))
            yield event
            if event.type in FINAL_EVENTS:
                return
        while True:
            wait = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
            if wait <= 0:
                return
            message = pubsub.get_message(timeout=wait)
            if message is None:
                continue
            sid, _, body = str(message["data"]).partition("|")
            try:
                event = Event.model_validate_json(body)
            except ValueError:
                continue
            if sid != "-":
                if _stream_id(sid) <= last:
                    continue  # already replayed
                last = _stream_id(sid)
                event.id = sid
            yield event
            if event.type in FINAL_EVENTS:
                return
    finally:
        pubsub.close()


class JobHandle:
    """Handle on a submitted job, returned by :func:`submit`.

    Attributes:
        id: atlas job id, known before the provider answers (the key of every call and
            the event topic id); the provider's own id is ``get(id).provider_job_id``.
        provider, endpoint: where it runs.
        streaming: whether chunks are published as ``output`` events.
    """

    def __init__(self, id: str, provider: str, endpoint: str, streaming: bool = False) -> None:
        self.id = id
        self.provider = provider
        self.endpoint = endpoint
        self.streaming = streaming

    def __repr__(self) -> str:
        return f"JobHandle(id={self.id!r}, provider={self.provider!r}, endpoint={self.endpoint!r})"

    def info(self) -> JobInfo:
        """Shortcut for :func:`get`."""
        return get(self.id)

    def cancel(self) -> None:
        """Shortcut for :func:`cancel`."""
        cancel(self.id)

    def wait(self, timeout: float | None = None) -> Any:
        """Block until the job ends and return its output.

        Raises:
            AtlasError: the job failed (the error's kind: ``provider`` for a handler
                error, ``timeout`` for a provider or max-duration timeout...).
            JobCancelled: the job was cancelled.
            AtlasTimeoutError: not finished within ``timeout`` seconds.
        """
        info = get(self.id)
        if info.done:
            if info.status == JobStatus.COMPLETED:
                return info.output
            raise _error_of(self.id, info.status, info.error)
        with closing(follow(self.id, timeout=timeout)) as stream:
            for event in stream:
                if event.type == "completed":
                    return event.data.get("output")
                if event.type in ("failed", "cancelled"):
                    raise _error_of(
                        self.id,
                        str(event.data.get("status") or event.type),
                        event.data.get("error"),
                    )
        raise AtlasTimeoutError(f"job {self.id} not finished after {timeout:g}s")

    def stream(self, timeout: float | None = None) -> Iterator[Any]:
        """Yield the job's output chunks in order as they arrive (from the first one,
        whenever you start), ending when the job does.

        A job submitted without ``stream=True`` yields its whole output once.

        Raises:
            AtlasError / JobCancelled: as :meth:`wait`, after the chunks that came before.
            AtlasTimeoutError: not finished within ``timeout`` seconds.
        """
        seen = 0
        with closing(follow(self.id, timeout=timeout)) as stream:
            for event in stream:
                if event.type == "output":
                    seq = int(event.data.get("seq") or 0)
                    if seq > seen:  # defensive: never yield a chunk twice
                        seen = seq
                        yield event.data.get("chunk")
                elif event.type == "completed":
                    if seen == 0 and not self.streaming:
                        yield event.data.get("output")
                    return
                elif event.type in ("failed", "cancelled"):
                    raise _error_of(
                        self.id,
                        str(event.data.get("status") or event.type),
                        event.data.get("error"),
                    )
        info = get(self.id)
        if info.done and info.status != JobStatus.COMPLETED:
            raise _error_of(self.id, info.status, info.error)
        if info.done:
            return
        raise AtlasTimeoutError(f"job {self.id} not finished after {timeout:g}s")


def _provider_name(provider: Any) -> str:
    resolved = resolve_provider_name(provider)
    if isinstance(resolved, Provider) or (
        isinstance(resolved, type) and issubclass(resolved, Provider)
    ):
        name = resolved.name  # workers rebuild providers by name
    else:
        name = str(resolved)
    cls = provider_class(name)  # unknown names fail here, naming the known ones
    if "serverless" not in cls.capabilities():
        raise UnsupportedError(f"provider {name!r} has no serverless jobs", provider=name)
    return name


def submit(
    endpoint: str | None = None,
    input: Any = None,
    *,
    provider: str | type[Provider] | Provider | None = None,
    webhook: str | None = None,
    policy: dict[str, Any] | None = None,
    stream: bool = False,
    max_duration_s: float | None = None,
    api_key: str | None = None,
) -> JobHandle:
    """Submit a serverless job: returns at once; workers submit and follow it.

    Args:
        endpoint: serverless endpoint id.
        input: the job's input (any JSON value).
        provider: provider name (argument > ``ATLAS_DEFAULT_PROVIDER``); needs the
            ``serverless`` capability.
        webhook: URL the provider calls when the job ends.
        policy: provider execution policy (RunPod ``executionTimeout``, ``ttl``...).
        stream: publish partial output as ``output`` events (``JobHandle.stream``).
        max_duration_s: atlas cancels the job at the provider and marks it ``timed_out``
            after this long (default 24 h).
        api_key: per-call provider key; rests Fernet-sealed in the record
            (needs ``ATLAS_SECRET_KEY``).

    Raises:
        ValidationError: a bad field (named), unknown provider, no secret key for api_key.
        UnsupportedError: the provider has no serverless jobs.
        TransportError: Redis or the broker could not be reached.
    """
    request = build_job_request(
        endpoint=endpoint, input=input, webhook=webhook, policy=policy, mode="async"
    )
    name = _provider_name(provider)
    if max_duration_s is None:
        max_duration_s = C.DEFAULT_JOB_MAX_DURATION_S
    if (
        isinstance(max_duration_s, bool)
        or not isinstance(max_duration_s, (int, float))
        or not math.isfinite(max_duration_s)
        or max_duration_s <= 0
    ):
        raise validation_error("max_duration_s", "must be a positive number of seconds")
    if not isinstance(stream, bool):
        raise validation_error("stream", "must be True or False")
    try:
        json.dumps(request.input)
    except (TypeError, ValueError):
        raise validation_error("input", "must be JSON-serialisable") from None
    job_id = secrets.token_hex(8)
    record = JobRecord(
        id=job_id,
        provider=name,
        endpoint=request.endpoint,
        stream=stream,
        status=JobStatus.SUBMITTING,
        max_duration_s=float(max_duration_s),
        api_key_sealed=seal({"api_key": api_key}) if api_key else None,
    )
    st = _store()
    try:
        st.create(record, max_duration_ms=int(max_duration_s * 1000))
    except Exception as exc:
        raise TransportError(f"could not record the job in Redis: {exc}") from exc
    events.publish(
        job_id,
        "status",
        {
            "status": JobStatus.SUBMITTING.value,
            "provider": name,
            "endpoint": request.endpoint,
            "stream": stream,
        },
        topic="job",
        client=st.r,
    )
    from atlas_tasks.celery_app import get_app

    app = get_app()

    try:
        # No queue here: the app's task_routes send atlas.jobs.* to the jobs queue.
        app.send_task(
            C.TASK_JOB_RUN,
            args=[job_id, request.model_dump(mode="json")],
            task_id=f"atlas-job-run-{job_id}",
            argsrepr=repr((job_id, "<request>")),
            kwargsrepr="{}",
        )
    except Exception as exc:
        error = {
            "kind": "transport",
            "provider": None,
            "status": None,
            "message": f"could not enqueue the job: {exc}",
        }
        st.finish(job_id, JobStatus.FAILED, require_status=JobStatus.SUBMITTING, error=error)
        raise TransportError(error["message"]) from exc
    return JobHandle(job_id, name, request.endpoint, streaming=stream)


def get(id: str) -> JobInfo:
    """The job's record: status, provider job id, timestamps, output or error.

    Raises:
        NotFoundError: unknown id, or its record expired (result TTL).
    """
    if not isinstance(id, str) or not id:
        raise validation_error("id", "must be a non-empty string")
    record = _store().get(id)
    if record is None:
        raise NotFoundError(f"job {id!r} is unknown or its record expired")
    return JobInfo.from_record(record)


def handle(id: str) -> JobHandle:
    """A :class:`JobHandle` for a job submitted elsewhere (another web node...).

    Raises:
        NotFoundError: unknown id.
    """
    info = get(id)
    return JobHandle(info.id, info.provider, info.endpoint, streaming=info.stream)


def cancel(id: str) -> None:
    """Cancel a job: a worker cancels it at the provider within one poll (idempotent; a
    finished job is left as it is).

    Raises:
        NotFoundError: unknown id.
    """
    if not isinstance(id, str) or not id:
        raise validation_error("id", "must be a non-empty string")
    status, seq = _store().request_cancel(id)
    if status == "missing":
        raise NotFoundError(f"job {id!r} is unknown or its record expired")
    if JobStatus(status).is_terminal or status == JobStatus.SUBMITTING:
        return  # nothing to do / the run task sees the flag before or after submitting
    from atlas_tasks.celery_app import get_app

    app = get_app()
    # A poll for the current sequence: it runs now if no poll is running, else it is a
    # harmless duplicate (single flight) and the running chain sees the flag. Routed to
    # the jobs queue by the app's task_routes.
    app.send_task(C.TASK_JOB_POLL, args=[id, seq, 0])


__all__ = [
    "FINAL_EVENTS",
    "JobCancelled",
    "JobHandle",
    "JobInfo",
    "cancel",
    "follow",
    "get",
    "handle",
    "submit",
]
