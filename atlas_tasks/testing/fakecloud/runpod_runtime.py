"""RunPod serverless runtime (``https://api.runpod.ai/v2/<endpoint_id>``) under ``/runpod/v2``.

Jobs need no background tasks: each job stores its timeline (submitted, starts after the
queue delay, ends after the run time) and its status is computed from the clock when read.
Any endpoint id is accepted; nothing has to be created first.

Input conventions (when ``input`` is an object; all optional):

``{"output": X}``
    the job's output is ``X`` instead of the default ``{"echo": input}``.
``{"chunks": N}`` or ``{"chunks": [c0, c1, ...]}``
    a streaming job: N chunks (``"chunk-0"``…, or the given values) are emitted evenly over
    the run time; ``/stream`` hands each chunk out exactly once and the final output is the
    list of all chunks (RunPod's aggregated stream).
``{"fail": "message"}``
    the job ends FAILED with ``error: "message"``.
``{"timeout": true}``
    the job ends TIMED_OUT (so does ``policy.executionTimeout`` shorter than the run time).
``{"fail_attempts": N}``
    ``fail``/``timeout`` apply only to the first N attempts, so ``/retry`` can succeed.
``{"run_time_s": x, "queue_delay_s": y}``
    per-job timings instead of the server's.

A ``webhook`` URL in the request gets the final ``/status`` body POSTed to it once the job
ends (not when it is cancelled), retried twice on failure, like RunPod's webhooks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from atlas_tasks.testing.fakecloud.common import (
    BadRequest,
    FakeCloudContext,
    Handler,
    RouteSpec,
    error,
    json_body,
    provider_routes,
)
from atlas_tasks.testing.fakecloud.config import FakeCloudConfig
from atlas_tasks.testing.fakecloud.state import CloudState

RUNTIME_PREFIX = "/runpod/v2"

log = logging.getLogger(__name__)

#: Webhook delivery: attempts in all, and the pause between them (RunPod: 3 tries, 10 s).
WEBHOOK_ATTEMPTS = 3
WEBHOOK_RETRY_DELAY_S = 0.5

FINAL = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMED_OUT"})

#: Body size limits of the real API (bytes).
RUN_LIMIT = 10 * 1024 * 1024
RUNSYNC_LIMIT = 20 * 1024 * 1024


@dataclass
class Job:
    """One serverless job and its clock-driven timeline (monotonic seconds)."""

    id: str
    endpoint_id: str
    input: Any
    policy: dict[str, Any]
    webhook: str | None
    sync: bool
    submitted: float
    queue_delay: float
    run_time: float
    result_ttl: float
    ttl: float
    attempt: int = 1
    retried: int = 0
    cancelled_at: float | None = None
    chunks: list[Any] | None = None
    stream_cursor: int = 0
    output_streamed: bool = False
    # Filled by _plan(): when the job stops running and how it ends.
    end: float = 0.0
    outcome: str = "COMPLETED"
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def start(self) -> float:
        """When the job leaves the queue."""
        return self.submitted + self.queue_delay

    def plan(self) -> None:
        """(Re)compute ``end``, ``outcome`` and ``error`` for the current attempt."""
        spec = self.input if isinstance(self.input, dict) else {}
        limit = spec.get("fail_attempts")
        faulty = not isinstance(limit, int) or self.attempt <= limit
        run = self.run_time
        self.outcome, self.error = "COMPLETED", None
        timeout_ms = self.policy.get("executionTimeout")
        if isinstance(timeout_ms, (int, float)) and timeout_ms / 1000 < run:
            run = timeout_ms / 1000
            self.outcome, self.error = "TIMED_OUT", "Job timed out (executionTimeout)"
        elif faulty and spec.get("timeout") is True:
            self.outcome, self.error = "TIMED_OUT", "Job timed out"
        elif faulty and spec.get("fail"):
            self.outcome, self.error = "FAILED", str(spec["fail"])
        self.end = self.start + run

    def status(self, now: float) -> str:
        """The status at ``now``."""
        if self.cancelled_at is not None:
            return "CANCELLED"
        if now < self.start:
            return "IN_QUEUE"
        if now < self.end:
            return "IN_PROGRESS"
        return self.outcome

    def finished_at(self) -> float:
        """When the job reached (or will reach) its final status."""
        return self.cancelled_at if self.cancelled_at is not None else self.end

    def gone(self, now: float) -> bool:
        """True once /status must answer 404 (result TTL or job TTL lapsed)."""
        if now > self.submitted + self.ttl:
            return True
        return self.status(now) in FINAL and now > self.finished_at() + self.result_ttl

    def output(self) -> Any:
        """The COMPLETED output."""
        if self.chunks is not None:
            return list(self.chunks)
        if isinstance(self.input, dict) and "output" in self.input:
            return self.input["output"]
        return {"echo": self.input}

    def available_chunks(self, now: float) -> int:
        """How many chunks the handler has produced by ``now``."""
        assert self.chunks is not None
        if now >= self.end:
            return len(self.chunks)
        if now < self.start or self.run_time <= 0:
            return 0
        step = self.run_time / len(self.chunks)
        return min(len(self.chunks), int((now - self.start) / step))

    def to_status(self, now: float) -> dict[str, Any]:
        """The ``/status`` body."""
        status = self.status(now)
        body: dict[str, Any] = {"id": self.id, "status": status}
        began = self.cancelled_at is None or self.cancelled_at >= self.start
        if status != "IN_QUEUE" and began:
            body["delayTime"] = int(self.queue_delay * 1000)
            body["workerId"] = f"fakeworker{self.attempt:04d}"
        if status in FINAL and began:
            body["executionTime"] = max(0, int((self.finished_at() - self.start) * 1000))
        if status == "COMPLETED":
            body["output"] = self.output()
        elif status in ("FAILED", "TIMED_OUT"):
            body["error"] = self.error
        if self.retried:
            body["retries"] = self.retried
        return body


class JobStore:
    """All jobs of the fake, keyed by id (guarded by the shared :class:`CloudState` lock)."""

    def __init__(self, config: FakeCloudConfig, state: CloudState) -> None:
        self.config = config
        self.state = state
        self.jobs: dict[str, Job] = {}
        self._last_sweep = 0.0

    def reset(self) -> None:
        """Forget every job."""
        with self.state.lock:
            self.jobs.clear()

    def submit(self, endpoint_id: str, body: Any, *, sync: bool) -> Job:
        """Validate a /run or /runsync body and enqueue the job.

        Raises:
            BadRequest: when ``input`` is missing or ``policy`` is malformed.
        """
        if not isinstance(body, dict) or "input" not in body:
            raise BadRequest('request body must be a JSON object with an "input" field')
        policy = body.get("policy") or {}
        if not isinstance(policy, dict):
            raise BadRequest("policy: must be an object")
        for name in ("executionTimeout", "ttl"):
            value = policy.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value <= 0
            ):
                raise BadRequest(f"policy.{name}: must be a positive integer (ms)")
        webhook = body.get("webhook")
        if webhook is not None and not isinstance(webhook, str):
            raise BadRequest("webhook: must be a URL string")
        spec = body["input"] if isinstance(body["input"], dict) else {}
        cfg = self.config
        job = Job(
            id=CloudState.new_job_id(sync),
            endpoint_id=endpoint_id,
            input=body["input"],
            policy=policy,
            webhook=webhook,
            sync=sync,
            submitted=time.monotonic(),
            queue_delay=_seconds(spec.get("queue_delay_s"), cfg.queue_delay_s),
            run_time=_seconds(spec.get("run_time_s"), cfg.run_time_s),
            result_ttl=cfg.runsync_result_ttl_s if sync else cfg.result_ttl_s,
            ttl=policy["ttl"] / 1000 if "ttl" in policy else cfg.job_ttl_s,
            chunks=_chunks(spec.get("chunks")),
        )
        job.plan()
        with self.state.lock:
            self._sweep(job.submitted)
            self.jobs[job.id] = job
            self.state.totals["jobs_submitted"] += 1
        return job

    def get(self, endpoint_id: str, job_id: str) -> Job | None:
        """The job, or None if unknown, expired or submitted to another endpoint."""
        with self.state.lock:
            job = self.jobs.get(job_id)
            if job is None or job.endpoint_id != endpoint_id:
                return None
            if job.gone(time.monotonic()):
                del self.jobs[job_id]
                return None
            return job

    def _sweep(self, now: float) -> None:
        # Drop expired jobs now and then so a long benchmark does not grow without bound.
        if now - self._last_sweep < 5.0:
            return
        self._last_sweep = now
        for job_id in [j.id for j in self.jobs.values() if j.gone(now)]:
            del self.jobs[job_id]


def _seconds(value: Any, default: float) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return float(value)
    return default


def _chunks(spec: Any) -> list[Any] | None:
    if isinstance(spec, bool):
        return None
    if isinstance(spec, int) and spec > 0:
        return [f"chunk-{i}" for i in range(spec)]
    if isinstance(spec, list) and spec:
        return list(spec)
    return None


async def deliver_webhook(job: Job, state: CloudState) -> None:
    """Wait for ``job`` to end, then POST its status body to ``job.webhook``."""
    assert job.webhook is not None
    while True:
        now = time.monotonic()
        with state.lock:
            if job.cancelled_at is not None:
                return
            current, wait = job.status(now), job.end - now
            body = job.to_status(now)
        if current in FINAL:
            break
        # Sleep to the planned end; a /retry moves it, so look again after waking.
        await asyncio.sleep(max(0.001, wait))
    async with httpx.AsyncClient(timeout=5.0) as client:
        for attempt in range(WEBHOOK_ATTEMPTS):
            try:
                response = await client.post(job.webhook, json=body)
                if 200 <= response.status_code < 300:
                    with state.lock:
                        state.totals["webhooks_sent"] += 1
                    return
            except httpx.HTTPError as exc:
                log.debug("webhook for job %s failed: %s", job.id, exc)
            if attempt + 1 < WEBHOOK_ATTEMPTS:
                await asyncio.sleep(WEBHOOK_RETRY_DELAY_S)
    with state.lock:
        state.totals["webhooks_failed"] += 1


def build_routes(ctx: FakeCloudContext) -> list[Route]:
    """All runtime routes, bound to ``ctx``."""
    store: JobStore = ctx.jobs
    state = ctx.state
    # Strong references: the loop only keeps weak ones to running tasks.
    webhook_tasks: set[asyncio.Task[None]] = set()

    def submit(endpoint_id: str, body: Any, *, sync: bool) -> Job:
        job = store.submit(endpoint_id, body, sync=sync)
        if job.webhook:
            task = asyncio.get_running_loop().create_task(deliver_webhook(job, state))
            webhook_tasks.add(task)
            task.add_done_callback(webhook_tasks.discard)
        return job

    def not_found(job_id: str) -> JSONResponse:
        return error(404, f"job {job_id} not found")

    async def read_body(request: Request, limit: int) -> Any:
        raw = await request.body()
        if len(raw) > limit:
            raise BadRequest(f"payload too large: {len(raw)} bytes (limit {limit})")
        return await json_body(request)

    async def run(request: Request) -> Response:
        endpoint_id = request.path_params["endpoint_id"]
        state.count_endpoint_call(endpoint_id, "runs")
        job = submit(endpoint_id, await read_body(request, RUN_LIMIT), sync=False)
        return JSONResponse({"id": job.id, "status": "IN_QUEUE"})

    async def runsync(request: Request) -> Response:
        endpoint_id = request.path_params["endpoint_id"]
        state.count_endpoint_call(endpoint_id, "runsyncs")
        wait_ms = ctx.config.runsync_default_wait_ms
        if "wait" in request.query_params:
            try:
                wait_ms = max(0, min(300_000, int(request.query_params["wait"])))
            except ValueError as exc:
                raise BadRequest("wait: must be an integer number of milliseconds") from exc
        job = submit(endpoint_id, await read_body(request, RUNSYNC_LIMIT), sync=True)
        deadline = time.monotonic() + wait_ms / 1000
        while True:
            now = time.monotonic()
            with state.lock:
                status = job.status(now)
                body = job.to_status(now)
            if status in FINAL or now >= deadline:
                return JSONResponse(body)
            # Short naps so a /cancel issued meanwhile is noticed quickly.
            await asyncio.sleep(max(0.001, min(0.05, deadline - now, job.end - now)))

    def job_route(calls: str, act: Callable[[Job], Response], *, total: bool = False) -> Handler:
        """A ``/{endpoint_id}/<verb>/{job_id}`` handler: count the call (in the endpoint's
        ``calls``, and in the cloud's totals when ``total``), find the job (404 if unknown)
        and run ``act`` on it, all under the state lock."""

        async def handler(request: Request) -> Response:
            endpoint_id = request.path_params["endpoint_id"]
            job_id = request.path_params["job_id"]
            state.count_endpoint_call(endpoint_id, calls)
            with state.lock:
                if total:
                    state.totals[calls] += 1
                job = store.get(endpoint_id, job_id)
                if job is None:
                    return not_found(job_id)
                return act(job)

        return handler

    def status(job: Job) -> Response:
        return JSONResponse(job.to_status(time.monotonic()))

    def stream(job: Job) -> Response:
        now = time.monotonic()
        current = job.status(now)
        items: list[dict[str, Any]] = []
        if current in ("IN_PROGRESS", "COMPLETED"):
            if job.chunks is not None:
                upto = job.available_chunks(now)
                items = [{"output": c} for c in job.chunks[job.stream_cursor : upto]]
                job.stream_cursor = max(job.stream_cursor, upto)
            elif current == "COMPLETED" and not job.output_streamed:
                # A non-generator handler: its whole output is the one stream item.
                job.output_streamed = True
                items = [{"output": job.output()}]
        return JSONResponse({"status": current, "stream": items})

    def cancel(job: Job) -> Response:
        now = time.monotonic()
        if job.status(now) not in FINAL:
            job.cancelled_at = now
        return JSONResponse({"id": job.id, "status": job.status(now)})

    def retry(job: Job) -> Response:
        now = time.monotonic()
        current = job.status(now)
        if current not in ("FAILED", "TIMED_OUT"):
            return error(
                400, f"job {job.id} is {current}; only FAILED or TIMED_OUT jobs can be retried"
            )
        job.attempt += 1
        job.retried += 1
        job.submitted = now
        job.stream_cursor = 0
        job.output_streamed = False
        job.plan()
        return JSONResponse({"id": job.id, "status": "IN_QUEUE"})

    async def purge(request: Request) -> Response:
        endpoint_id = request.path_params["endpoint_id"]
        state.count_endpoint_call(endpoint_id, "purges")
        now = time.monotonic()
        with state.lock:
            queued = [
                j.id
                for j in store.jobs.values()
                if j.endpoint_id == endpoint_id and j.status(now) == "IN_QUEUE"
            ]
            for job_id in queued:
                del store.jobs[job_id]
        return JSONResponse({"removed": len(queued), "status": "completed"})

    async def health(request: Request) -> Response:
        endpoint_id = request.path_params["endpoint_id"]
        state.count_endpoint_call(endpoint_id, "health_calls")
        now = time.monotonic()
        counts = {"completed": 0, "failed": 0, "inProgress": 0, "inQueue": 0, "retried": 0}
        with state.lock:
            for job in store.jobs.values():
                if job.endpoint_id != endpoint_id or job.gone(now):
                    continue
                current = job.status(now)
                key = {
                    "COMPLETED": "completed",
                    "FAILED": "failed",
                    "TIMED_OUT": "failed",
                    "IN_PROGRESS": "inProgress",
                    "IN_QUEUE": "inQueue",
                }.get(current)
                if key:
                    counts[key] += 1
                counts["retried"] += job.retried
        workers = {"idle": ctx.config.idle_workers, "running": counts["inProgress"]}
        return JSONResponse({"jobs": counts, "workers": workers})

    routes: list[RouteSpec] = [
        (["POST"], "/{endpoint_id}/run", run, False),
        (["POST"], "/{endpoint_id}/runsync", runsync, False),
        (
            ["GET", "POST"],
            "/{endpoint_id}/status/{job_id}",
            job_route("status_calls", status, total=True),
            False,
        ),
        (
            ["GET", "POST"],
            "/{endpoint_id}/stream/{job_id}",
            job_route("stream_calls", stream, total=True),
            False,
        ),
        (["POST"], "/{endpoint_id}/cancel/{job_id}", job_route("cancels", cancel), False),
        (["POST"], "/{endpoint_id}/retry/{job_id}", job_route("retries", retry), False),
        (["POST"], "/{endpoint_id}/purge-queue", purge, False),
        (["GET"], "/{endpoint_id}/health", health, False),
    ]
    return provider_routes(ctx, "runtime", RUNTIME_PREFIX, routes)
