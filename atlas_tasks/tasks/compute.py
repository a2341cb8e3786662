"""Compute tasks: ``atlas.compute.spawn``, ``atlas.compute.terminate``,
``atlas.compute.terminate_batch``, ``atlas.compute.terminate_orphan``.

Each is one :class:`~atlas_tasks.sessions.service.SessionService` call plus the shared
retry policy (:mod:`atlas_tasks.task_retry`). Spawn and terminate are
late-acked and rejected on worker loss, so a worker killed mid-task leads to redelivery;
that is safe because both are idempotent (see :mod:`atlas_tasks.sessions.service`).
Queues come from the app's ``task_routes`` (``atlas.compute.*`` → ``compute``). Results
never carry a raw secret.
"""

from __future__ import annotations

import logging
from typing import Any

import redis
from celery import Task, shared_task

from atlas_tasks import constants as C
from atlas_tasks import task_reprs
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import AtlasError, is_transient
from atlas_tasks.sessions.service import SessionService
from atlas_tasks.task_retry import SPAWN_RETRY, TERMINATE_RETRY, backoff_s

log = logging.getLogger(__name__)

#: How long before the reaper re-tries a terminate that exhausted its retries.
TERMINATE_GIVE_UP_RETRY_MS = 60_000

_LATE = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "max_retries": None}


def service() -> SessionService:
    """The session service on the process's dependencies (settings read now)."""
    return SessionService(Dependencies.default())


@shared_task(name=C.TASK_SPAWN, **_LATE)
def spawn(self: Task, session_id: str, sealed: str) -> dict[str, Any]:
    """Create the pod of a tracked session (args: session id, Fernet-sealed payload)."""
    svc = service()
    try:
        return svc.spawn(session_id, sealed, attempt_id=str(self.request.id))
    except Exception as exc:
        # Redis unreachable (a restart, a failover) is transient too: the session cannot
        # even be marked failed meanwhile, so failing now would only lose the message.
        SPAWN_RETRY.retry(
            self,
            exc,
            what=f"spawn {session_id}",
            retryable=is_transient(exc) or isinstance(exc, redis.RedisError),
        )
        if not isinstance(exc, AtlasError):
            log.exception("spawn %s failed with an unexpected error", session_id)
        else:
            log.warning("spawn %s failed: %s", session_id, exc)
        return svc.spawn_failed(session_id, exc)


@shared_task(name=C.TASK_TERMINATE, **_LATE)
def terminate(self: Task, session_id: str, reason: str = "requested") -> dict[str, Any]:
    """Terminate a tracked session's pod; 404 is success; retried with backoff."""
    svc = service()
    try:
        outcome = svc.terminate(session_id, reason=reason, fence_token=str(self.request.id))
    except Exception as exc:
        TERMINATE_RETRY.retry(
            self,
            exc,
            what=f"terminate {session_id}",
            retryable=is_transient(exc) or not isinstance(exc, AtlasError),
        )
        log.error(
            "terminate %s gave up after %d attempts: %s",
            session_id,
            int(self.request.retries or 0) + 1,
            exc,
        )
        svc.terminate_gave_up(session_id, exc, TERMINATE_GIVE_UP_RETRY_MS)
        error = exc.to_dict() if isinstance(exc, AtlasError) else {"kind": "unknown"}
        return {"session_id": session_id, "outcome": "terminate_failed", "error": error}
    return {"session_id": session_id, "outcome": outcome, "reason": reason}


@shared_task(name=C.TASK_TERMINATE_BATCH, **_LATE)
def terminate_batch(
    self: Task, session_ids: list[str], reason: str = "idle_timeout"
) -> dict[str, Any]:
    """Terminate a batch of sessions (the reaper's and the expiry listener's idle path).

    A session whose terminate raised is re-enqueued alone as ``atlas.compute.terminate``,
    which owns the retries with backoff and the ``terminate_failed`` event.
    """
    outcomes = service().terminate_many(
        session_ids, reason=reason, fence_prefix=str(self.request.id)
    )
    summary: dict[str, int] = {}
    for session_id, outcome in outcomes.items():
        if isinstance(outcome, BaseException):
            log.warning(
                "terminate %s in a batch failed (%s); retrying it alone", session_id, outcome
            )
            terminate.apply_async(
                (session_id, reason),
                countdown=backoff_s(0),
                **task_reprs.terminate(session_id, reason),
            )
            outcome = "retrying"
        summary[outcome] = summary.get(outcome, 0) + 1
    return {"sessions": len(session_ids), "outcomes": summary, "reason": reason}


@shared_task(name=C.TASK_TERMINATE_ORPHAN, **_LATE)
def terminate_orphan(
    self: Task, provider: str, compute_id: str, pod_name: str | None = None
) -> dict[str, Any]:
    """Terminate an untracked prefixed pod found by the reaper."""
    svc = service()
    try:
        outcome = svc.terminate_orphan(
            provider, compute_id, pod_name, fence_token=str(self.request.id)
        )
    except AtlasError as exc:
        TERMINATE_RETRY.retry(
            self, exc, what=f"orphan terminate {provider}/{compute_id}", retryable=is_transient(exc)
        )
        # The next orphan scan finds the pod again; nothing is lost.
        return {"compute_id": compute_id, "outcome": "terminate_failed", "error": exc.to_dict()}
    return {"compute_id": compute_id, "outcome": outcome}
