"""Fly platform tasks: ``atlas.fly.deploy`` and ``atlas.fly.logs_poll`` (queue ``fly``).

``deploy`` is **acked early** (``acks_late=False``, no retries): a deploy must never be
re-run because a message was redelivered, e.g. after a worker died mid-deploy (flyctl may
already have rolled out the release). A lost deploy shows up as a ticket whose stream
has no ``exit`` event; re-deploying is the caller's decision. The task returns its
outcome instead of raising: a failure's message carries flyctl's last output lines, and
Celery would log a raised exception at ERROR.

``logs_poll`` is one slice of an app's single-instance logs streamer (see
:mod:`atlas_tasks.fly.log_streamer`); it re-enqueues itself with its owner token until
no subscriber is left. Also acked early: a lost slice only delays the chain until a
subscriber notices the expired lock and starts a new one.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from atlas_tasks import constants as C
from atlas_tasks.errors import AtlasError
from atlas_tasks.fly import deploy as fly_deploy
from atlas_tasks.fly import log_streamer

log = logging.getLogger(__name__)


@shared_task(name=C.TASK_FLY_DEPLOY, bind=True, acks_late=False, max_retries=0)
def deploy(self: Task, ticket: str, project_path: str | None, app_dir: str,
           activity_timeout_s: float | None = None,
           max_timeout_s: float | None = None) -> dict[str, Any]:
    """Run ``fly deploy --remote-only`` for a ticket, streaming lines on topic ``deploy``."""
    try:
        result = fly_deploy.stream_deploy(project_path, app_dir, ticket,
                                          activity_timeout_s=activity_timeout_s,
                                          max_timeout_s=max_timeout_s)
    except AtlasError as exc:
        # The message may quote flyctl output; log the kind only (the ticket has the rest).
        log.warning("fly deploy %s failed: %s%s", ticket, exc.kind,
                    f" (exit code {exc.status})" if exc.status is not None else "")
        # The result shows in Flower: keep the first line of the message, not the output
        # tail (it may quote secrets); the ticket's exit event has the whole message.
        error = exc.to_dict()
        error["message"] = str(error.get("message") or "").split("\n", 1)[0]
        return {"ticket": ticket, "ok": False, "code": exc.status if exc.kind == "provider"
                else None, "error": error}
    return {"ticket": ticket, "ok": True, "code": result.code, "lines": result.lines,
            "duration_s": round(result.duration_s, 3)}


@shared_task(name=C.TASK_FLY_LOGS_POLL, bind=True, acks_late=False, max_retries=0)
def logs_poll(self: Task, app: str, owner: str | None = None, had_subscriber: bool = False,
              alone_since_ms: int | None = None) -> dict[str, Any]:
    """One slice of ``app``'s logs streamer; re-enqueues itself while it should run."""
    if owner is None:
        owner = log_streamer.new_owner(self.request.hostname)
        if not log_streamer.acquire(app, owner):
            return {"app": app, "outcome": "locked"}
    result = log_streamer.run_slice(app, owner, had_subscriber=had_subscriber,
                                    alone_since_ms=alone_since_ms)
    if result.outcome == "continue":
        try:
            logs_poll.apply_async((app, owner, result.had_subscriber, result.alone_since_ms),
                                  queue=C.QUEUE_FLY)
        except Exception:
            # Let a subscriber start a fresh chain at once instead of after the lease.
            log_streamer.release(app, owner)
            raise
    return result.as_dict()
