"""Serverless job tasks: ``atlas.jobs.run`` and ``atlas.jobs.poll``.

Each task is one call into :class:`atlas_tasks.jobs.service.JobService`. ``run`` submits a
recorded job once and schedules the first poll. ``poll`` is one single-flight iteration;
it re-enqueues itself with a countdown (exponential backoff + jitter) instead of
sleeping, so a worker slot is busy only for the duration of one provider call, whatever
the number of jobs in flight. Queues come from the app's ``task_routes`` (``atlas.jobs.*``
→ ``jobs``), never from the call sites.

Both are late-acked and rejected on worker loss: a killed worker's message is
redelivered, which is safe because submission is write-ahead guarded and polling is
single-flight (duplicates exit as ``stale``). Poll results are not stored (they would
cost a Redis write per poll and nobody reads them); the job record and events are the
result.

Retries use the one shared backoff policy (:mod:`atlas_tasks.task_retry`), not
``autoretry_for``: a refused submission is retried a bounded number of times and then
*fails the job* (which ``autoretry_for`` cannot express), while Redis/broker errors are
retried without limit.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import redis
from celery import Task, shared_task
from kombu.exceptions import OperationalError

from atlas_tasks import constants as C
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import AtlasError
from atlas_tasks.jobs.service import JobService
from atlas_tasks.task_retry import INFRA_RETRY, JOB_POLL_RETRY, JOB_SUBMIT_RETRY

log = logging.getLogger(__name__)


def _service() -> JobService:
    return JobService(Dependencies.default())


def schedule_poll(job_id: str, seq: int, attempt: int, delay_s: float) -> None:
    """Enqueue poll ``seq`` of a job after ``delay_s`` seconds (routed by ``task_routes``)."""
    poll.apply_async((job_id, seq, attempt), countdown=max(0.0, delay_s))


@shared_task(
    name=C.TASK_JOB_RUN, bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None
)
def run(self: Task, job_id: str, request: dict[str, Any]) -> dict[str, Any]:
    """Submit a recorded job (``/run``) and schedule its first poll."""
    service = _service()
    retries = int(self.request.retries or 0)
    try:
        outcome = service.run(job_id, request)
    except redis.RedisError as exc:  # before the provider call or after it: both are safe
        # to retry (the write-ahead flag turns a retry after a submission into a failure)
        log.warning("job %s: Redis error during submission (%s); retrying", job_id, exc)
        INFRA_RETRY.retry_now(self, exc, retries)
    except AtlasError as exc:  # raised only when the provider surely did not take the job
        JOB_SUBMIT_RETRY.retry(self, exc, what=f"job {job_id} submission")
        return service.fail_submission(job_id, exc)
    if outcome.get("poll_seq") is not None:
        try:
            schedule_poll(job_id, int(outcome["poll_seq"]), 0, service.poll_delay_s(0))
        except OperationalError as exc:
            # The job is submitted; the retry finds it so ("submitted") and only
            # schedules the poll again.
            log.warning("job %s: could not schedule its first poll (%s); retrying", job_id, exc)
            INFRA_RETRY.retry_now(self, exc, retries)
    return outcome


@shared_task(
    name=C.TASK_JOB_POLL,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    soft_time_limit=C.JOB_POLL_TIME_LIMIT_S - 5,
    time_limit=C.JOB_POLL_TIME_LIMIT_S,
)
def poll(self: Task, job_id: str, seq: int, attempt: int = 0) -> dict[str, Any]:
    """One single-flight poll iteration; reschedules itself until the job ends."""
    # Unique per execution, not per message: a redelivered copy must not pass the fence
    # of the execution it duplicates.
    owner = f"{self.request.id}:{uuid.uuid4().hex[:8]}"
    try:
        result = _service().poll(
            job_id, int(seq), int(attempt), owner=owner, schedule=schedule_poll
        )
    except (redis.RedisError, OperationalError) as exc:
        # Keep the chain alive through a Redis or broker hiccup: the same iteration runs
        # again (single flight makes a duplicate of it harmless).
        log.warning("job %s: Redis/broker error while polling (%s); retrying", job_id, exc)
        JOB_POLL_RETRY.retry_now(self, exc)
    return result.as_dict()
