"""Fly platform tasks: ``atlas.fly.deploy`` and ``atlas.fly.logs_poll`` (queue ``fly``).

Thin: one :mod:`atlas_tasks.fly.service` call each, with the process-wide dependencies.
The queue comes from the app's ``task_routes`` (``atlas.fly.*``), never from a call site.

Neither task retries (``max_retries=0``, no ``autoretry_for``) and both are **acked
early** (``acks_late=False``):

* ``deploy`` must never be re-run because a message was redelivered, e.g. after a worker
  died mid-deploy (flyctl may already have rolled out the release). A lost deploy shows up
  as a ticket whose stream has no ``exit`` event; re-deploying is the caller's decision.
  The task returns its outcome instead of raising: a failure's message carries flyctl's
  last output lines, and Celery would log a raised exception at ERROR.
* ``logs_poll`` is one slice of an app's single-instance logs streamer; it re-enqueues
  itself with its owner token until no subscriber is left. A lost slice only delays the
  chain until a subscriber notices the expired lock and starts a new one.
"""

from __future__ import annotations

from typing import Any

from celery import Task, shared_task

from atlas_tasks import constants as C
from atlas_tasks.deps import Dependencies
from atlas_tasks.fly import service


@shared_task(name=C.TASK_FLY_DEPLOY, bind=True, acks_late=False, max_retries=0)
def deploy(
    self: Task,
    ticket: str,
    project_path: str | None,
    app_dir: str,
    activity_timeout_s: float | None = None,
    max_timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run ``fly deploy --remote-only`` for a ticket, streaming lines on topic ``deploy``."""
    return service.deploy(
        Dependencies.default(), ticket, project_path, app_dir, activity_timeout_s, max_timeout_s
    )


def _enqueue_next_slice(
    app: str, owner: str, had_subscriber: bool, alone_since_ms: int | None
) -> None:
    logs_poll.apply_async((app, owner, had_subscriber, alone_since_ms))


@shared_task(name=C.TASK_FLY_LOGS_POLL, bind=True, acks_late=False, max_retries=0)
def logs_poll(
    self: Task,
    app: str,
    owner: str | None = None,
    had_subscriber: bool = False,
    alone_since_ms: int | None = None,
) -> dict[str, Any]:
    """One slice of ``app``'s logs streamer; re-enqueues itself while it should run."""
    return service.poll_logs(
        Dependencies.default(),
        app,
        owner,
        had_subscriber,
        alone_since_ms,
        enqueue_next=_enqueue_next_slice,
        hostname=self.request.hostname,
    )
