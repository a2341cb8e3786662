"""Fly.io platform ops: app discovery, ``fly deploy`` as a Celery task, log tailing, tokens.

Caller side (web process; enqueues, never runs flyctl)::

    from atlas_tasks import fly

    fly.discover_apps("/srv/project")              # [("api", "/srv/project/api"), ...]
    ticket = fly.enqueue_deploy("/srv/project", "api")
    for event in fly.subscribe_deploy(ticket):     # replay + live; ends after "exit"
        if event.type == "line":
            print(event.data["line"])
        elif event.type == "exit":
            ok = event.data["ok"]

    for entry in fly.subscribe_logs("api"):        # starts the app's streamer if needed
        print(entry.timestamp, entry.message)

    fly.tokens.get("api"); fly.tokens.set_manual("api", "FlyV1 ...")

Worker side: the tasks ``atlas.fly.deploy`` and ``atlas.fly.logs_poll`` (queue ``fly``,
:mod:`atlas_tasks.tasks.fly`). :func:`stream_deploy` runs a deploy in this process.

Modules: ``apps`` (fly.toml), ``deploy`` (the flyctl runner), ``logs`` (logs API client),
``log_streamer`` (single-instance streamer + subscribers), ``tokens`` (the token chain),
``token_storage`` (Redis / file / memory backends).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Generator, Iterator

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.config import get_settings
from atlas_tasks.errors import validation_error
from atlas_tasks.events import Event
from atlas_tasks.fly import tokens
from atlas_tasks.fly.apps import discover_apps
from atlas_tasks.fly.deploy import DeployResult, run_deploy, stream_deploy
from atlas_tasks.fly.log_streamer import subscribe as _subscribe_logs
from atlas_tasks.fly.logs import LogEntry, LogPage, LogsClient
from atlas_tasks.fly.token_storage import (
    FileTokenStorage,
    MemoryTokenStorage,
    RedisTokenStorage,
    TokenRecord,
    TokenStorage,
    check_app,
)
from atlas_tasks.fly.tokens import FlyTokens


def new_ticket() -> str:
    """A fresh deploy ticket id (``deploy-`` + 16 hex chars)."""
    return f"deploy-{secrets.token_hex(8)}"


def enqueue_deploy(
    project_path: str | os.PathLike[str] | None,
    app_dir: str | os.PathLike[str],
    *,
    activity_timeout_s: float | None = None,
    max_timeout_s: float | None = None,
) -> str:
    """Enqueue ``fly deploy --remote-only`` in ``app_dir`` on the ``fly`` queue.

    The directory is checked by the worker (it is a path on the worker's disk); a bad one
    ends the ticket with an ``exit`` event carrying a ``validation`` error.

    Args:
        project_path: project root for a relative ``app_dir`` (``None``: absolute only).
        app_dir: the app's directory (holding ``fly.toml``).
        activity_timeout_s: kill after this long without output (default 300 s).
        max_timeout_s: kill after this long in total (default 1800 s).

    Returns:
        The ticket: pass it to :func:`subscribe_deploy`.

    Raises:
        ValidationError: empty ``app_dir`` or a non-positive timeout.
    """
    if not str(app_dir).strip():
        raise validation_error("app_dir", "must name a directory")
    for name, value in (("activity_timeout_s", activity_timeout_s),
                        ("max_timeout_s", max_timeout_s)):
        if value is not None and not value > 0:
            raise validation_error(name, "must be a positive number of seconds")
    from atlas_tasks.celery_app import get_app  # row 8: imported only when enqueueing
    app = get_app()

    cap = max_timeout_s or get_settings().fly_deploy_max_timeout_s
    ticket = new_ticket()
    app.send_task(
        C.TASK_FLY_DEPLOY,
        args=[ticket, None if project_path is None else str(project_path), str(app_dir),
              activity_timeout_s, max_timeout_s],
        task_id=f"atlas-fly-{ticket}", queue=C.QUEUE_FLY,
        # The runner's own cap kills flyctl first; the hard limit is the backstop
        # (the app-wide default is sized for spawns and would cut a long deploy short).
        time_limit=cap + C.FLY_DEPLOY_TIME_LIMIT_MARGIN_S,
        soft_time_limit=cap + C.FLY_DEPLOY_TIME_LIMIT_MARGIN_S / 2,
    )
    return ticket


def subscribe_deploy(ticket: str, *, timeout: float | None = None,
                     redis_url: str | None = None) -> Iterator[Event]:
    """Events of a deploy ticket: what was recorded so far, then live, until ``exit``.

    Types: ``started``, ``line`` (``data["line"]``, ``data["n"]``), ``exit``
    (``data["ok"]``, ``data["code"]``, ``data["error"]``).

    Args:
        timeout: stop after this many seconds without an event (``None`` = never; a
            deploy whose worker died never sends ``exit``).
    """
    return events.subscribe(ticket, topic="deploy", timeout=timeout, until=("exit",),
                            redis_url=redis_url)


def start_log_streamer(app: str) -> None:
    """Enqueue ``app``'s logs streamer (a no-op task when one already runs)."""
    from atlas_tasks.celery_app import get_app  # row 8: imported only when enqueueing
    celery = get_app()

    check_app(app)
    celery.send_task(C.TASK_FLY_LOGS_POLL, args=[app], queue=C.QUEUE_FLY)


def subscribe_logs(app: str, *, timeout: float | None = None,
                   redis_url: str | None = None) -> Generator[LogEntry, None, None]:
    """Log entries of ``app`` from now on, across the cluster.

    Registers this subscriber in Redis while it iterates and makes sure the app's single
    streamer runs (see :mod:`atlas_tasks.fly.log_streamer`). Close the iterator (or let
    it go) to unsubscribe; the streamer stops when no subscriber is left.

    Args:
        timeout: stop after this many seconds without an entry (``None`` = never).
    """
    return _subscribe_logs(app, start_log_streamer, timeout=timeout, redis_url=redis_url)


__all__ = [
    "DeployResult",
    "FileTokenStorage",
    "FlyTokens",
    "LogEntry",
    "LogPage",
    "LogsClient",
    "MemoryTokenStorage",
    "RedisTokenStorage",
    "TokenRecord",
    "TokenStorage",
    "discover_apps",
    "enqueue_deploy",
    "new_ticket",
    "run_deploy",
    "start_log_streamer",
    "stream_deploy",
    "subscribe_deploy",
    "subscribe_logs",
    "tokens",
]
