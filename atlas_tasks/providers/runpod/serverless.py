"""RunPod serverless runtime: run, runsync (hard deadline), status, stream, cancel, health.

Every path is ``<runtime_url>/<endpoint>/...`` (reference notes §2).

* ``run`` and ``runsync`` are POSTs that enqueue work, so they are sent ``idempotent=False``
  (a blind retry could run the job twice); ``cancel`` is safe to retry.
* ``runsync`` enforces ``JobRequest.timeout_ms`` as a hard client-side deadline: the HTTP
  read timeout is the time left, ``?wait=`` asks RunPod to hold the answer that long
  (clamped to its 1 000..300 000 ms range), and when RunPod answers with a non-final status
  the job is polled on ``/status`` until it ends or the deadline passes. Passing the
  deadline raises ``AtlasTimeoutError`` ("runsync exceeded <N>ms"); ``err.raw`` carries the
  job id when one is known, so the caller can keep polling or cancel.
* ``stream`` yields the *unwrapped* chunk values (``{"output": x}`` → ``x``), unlike ExAtlas
  which yielded the raw maps: callers want the model's output, and an item without an
  ``output`` key is passed through unchanged so nothing is lost.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

from atlas_tasks.errors import AtlasError, AtlasTimeoutError, validation_error
from atlas_tasks.providers.http import HttpClient, is_timeout
from atlas_tasks.providers.runpod import translate
from atlas_tasks.specs import Job, JobRequest, JobStatus

#: First /stream (and runsync /status) poll delay; doubles up to STREAM_MAX_DELAY_S.
STREAM_BASE_DELAY_S = 0.5
STREAM_MAX_DELAY_S = 5.0

#: RunPod's accepted ``?wait=`` range for /runsync, in ms.
RUNSYNC_WAIT_MIN_MS = 1_000
RUNSYNC_WAIT_MAX_MS = 300_000


def endpoint_path(endpoint: str, suffix: str) -> str:
    """``/<endpoint><suffix>`` with the endpoint checked and percent-encoded.

    Raises:
        ValidationError: field ``endpoint`` when empty.
    """
    if not isinstance(endpoint, str) or not endpoint.strip():
        raise validation_error(
            "endpoint", "a RunPod serverless endpoint id is required", provider="runpod"
        )
    return f"/{quote(endpoint.strip(), safe='')}{suffix}"


def job_path(endpoint: str, action: str, job_id: str) -> str:
    """``/<endpoint>/<action>/<job_id>``, both ids checked and encoded."""
    if not isinstance(job_id, str) or not job_id.strip():
        raise validation_error("job_id", "must be a non-empty string", provider="runpod")
    return endpoint_path(endpoint, f"/{action}/{quote(job_id.strip(), safe='')}")


def run(api: HttpClient, request: JobRequest) -> Job:
    """``POST /run``: enqueue and return at once (status usually in_queue)."""
    answer = api.call(
        "POST",
        endpoint_path(request.endpoint, "/run"),
        json=translate.job_body(request),
        expect=(200, 201),
        idempotent=False,
    )
    return translate.job_from_response(answer.data, request.endpoint)


def run_sync(
    api: HttpClient,
    request: JobRequest,
    *,
    clock: Callable[[], float] = time.monotonic,
    rand: Callable[[], float] | None = None,
) -> Job:
    """``POST /runsync`` bounded by ``request.timeout_ms`` (see the module docstring).

    Raises:
        AtlasTimeoutError: the deadline passed before the job ended.
    """
    timeout_ms = request.timeout_ms
    deadline = clock() + timeout_ms / 1000
    wait_ms = max(RUNSYNC_WAIT_MIN_MS, min(RUNSYNC_WAIT_MAX_MS, timeout_ms))
    try:
        answer = api.call(
            "POST",
            endpoint_path(request.endpoint, "/runsync"),
            params={"wait": wait_ms},
            json=translate.job_body(request),
            expect=(200, 201),
            idempotent=False,
            timeout_s=timeout_ms / 1000,
            max_retries=0,
        )
    except AtlasError as err:
        if is_timeout(err):
            raise _timed_out(timeout_ms, None) from err
        raise
    job = translate.job_from_response(answer.data, request.endpoint)
    delay = STREAM_BASE_DELAY_S
    while not job.status.is_terminal:
        left = deadline - clock()
        if left <= 0:
            raise _timed_out(timeout_ms, job.id)
        api.sleep(min(_jittered(delay, rand), left))
        if deadline - clock() <= 0:
            raise _timed_out(timeout_ms, job.id)
        try:
            job = status(
                api,
                request.endpoint,
                job.id,
                timeout_s=max(0.001, min(api.timeout_s, deadline - clock())),
            )
        except AtlasError as err:
            if is_timeout(err):
                raise _timed_out(timeout_ms, job.id) from err
            raise
        delay = min(delay * 2, STREAM_MAX_DELAY_S)
    return job


def status(api: HttpClient, endpoint: str, job_id: str, *, timeout_s: float | None = None) -> Job:
    """``GET /status/{id}``; 404 (unknown or expired job) raises ``NotFoundError``."""
    answer = api.call("GET", job_path(endpoint, "status", job_id), timeout_s=timeout_s)
    return translate.job_from_response(answer.data, endpoint)


def cancel(api: HttpClient, endpoint: str, job_id: str) -> None:
    """``POST /cancel/{id}``. Safe to retry."""
    api.call("POST", job_path(endpoint, "cancel", job_id), expect=(200, 201, 204), idempotent=True)


def health(api: HttpClient, endpoint: str) -> dict[str, Any]:
    """``GET /health``: ``{"jobs": {...}, "workers": {...}}`` as RunPod returns it."""
    data = api.call("GET", endpoint_path(endpoint, "/health")).data
    return data if isinstance(data, dict) else {}


def stream(
    api: HttpClient,
    endpoint: str,
    job_id: str,
    *,
    rand: Callable[[], float] | None = None,
) -> Iterator[Any]:
    """Poll ``GET /stream/{id}`` and yield each chunk's output value, in order.

    Stops on a terminal status after yielding that answer's remaining chunks; a job that
    ended FAILED, CANCELLED or TIMED_OUT then raises (kind ``provider`` / ``timeout``) with
    the job's error read from ``/status``. The delay
    starts at 0.5 s, doubles while nothing arrives (cap 5 s, plus up to 25 % jitter) and
    drops back to 0.5 s after chunks arrive, so a flowing stream stays responsive. HTTP
    failures raise (after the HTTP layer's retries) instead of ending the stream silently
    as ExAtlas did: a truncated stream must not look like a finished one.
    """
    job_path(endpoint, "stream", job_id)  # validate before the first read
    delay = STREAM_BASE_DELAY_S
    while True:
        state, chunks = read_stream(api, endpoint, job_id)
        yield from chunks
        if state is not None and state.is_terminal:
            if state != JobStatus.COMPLETED:
                raise _stream_ended(status(api, endpoint, job_id))
            return
        delay = STREAM_BASE_DELAY_S if chunks else min(delay * 2, STREAM_MAX_DELAY_S)
        api.sleep(_jittered(delay, rand))


def read_stream(api: HttpClient, endpoint: str, job_id: str) -> tuple[JobStatus | None, list[Any]]:
    """One ``GET /stream/{id}``: ``(status or None, chunk outputs)``, never sleeping.

    RunPod hands each chunk out once: a second read returns only newer chunks.
    """
    answer = api.call("GET", job_path(endpoint, "stream", job_id))
    return translate.stream_chunks(answer.data)


def _stream_ended(job: Job) -> AtlasError:
    # A failed, cancelled or timed-out job must not look like a stream that simply ended.
    detail = job.error if isinstance(job.error, str) else (job.error and str(job.error))
    message = f"job {job.id} ended {job.status.value}" + (f": {detail}" if detail else "")
    kind = "timeout" if job.status == JobStatus.TIMED_OUT else "provider"
    return AtlasError(message, kind=kind, provider="runpod", raw=job.raw)


def _jittered(delay: float, rand: Callable[[], float] | None) -> float:
    return delay + delay * 0.25 * (rand() if rand else 0.0)


def _timed_out(timeout_ms: int, job_id: str | None) -> AtlasTimeoutError:
    return AtlasTimeoutError(
        f"runsync exceeded {timeout_ms}ms" + (f" (job {job_id})" if job_id else ""),
        provider="runpod",
        raw={"job_id": job_id} if job_id else None,
    )


__all__ = [
    "RUNSYNC_WAIT_MAX_MS",
    "RUNSYNC_WAIT_MIN_MS",
    "STREAM_BASE_DELAY_S",
    "STREAM_MAX_DELAY_S",
    "cancel",
    "endpoint_path",
    "health",
    "job_path",
    "run",
    "run_sync",
    "stream",
]
