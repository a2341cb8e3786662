"""The Fly feature's caller side: enqueue deploys and streamers, follow tickets and logs.

Runs in the web process: it enqueues Celery tasks by name (routed to the ``fly`` queue by
the app's ``task_routes``) and reads Redis; it never runs flyctl or calls the logs API
(except :func:`stream_deploy`, which deliberately runs a deploy in this process).
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Generator, Iterator
from typing import Any

import redis

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import UnauthorizedError, validation_error
from atlas_tasks.events import Event
from atlas_tasks.fly import service, store
from atlas_tasks.fly.deploy import DeployResult
from atlas_tasks.fly.logs import LogEntry
from atlas_tasks.fly.store import DeployEvent, LogsEvent
from atlas_tasks.fly.token_storage import check_app
from atlas_tasks.redis_conn import get_redis

#: ``start(app)``: enqueue a streamer (:func:`start_log_streamer`; replaced in tests).
Starter = Callable[[str], None]

#: Where a Fly token comes from, in order (:mod:`atlas_tasks.fly.tokens`).
TOKEN_CHAIN = (
    "ATLAS_FLY_API_TOKEN or FLY_API_TOKEN in the worker's environment, "
    "~/.fly/config.yml (ATLAS_FLY_CONFIG_FILE), `fly tokens create readonly`, "
    "or a manual token (FlyTokens.set_manual)"
)


def new_ticket() -> str:
    """A fresh deploy ticket id (``deploy-`` + 16 hex chars)."""
    return f"deploy-{secrets.token_hex(8)}"


# ----------------------------------------------------------------------------- deploy


def enqueue_deploy(
    project_path: str | os.PathLike[str] | None,
    app_dir: str | os.PathLike[str],
    *,
    activity_timeout_s: float | None = None,
    max_timeout_s: float | None = None,
) -> str:
    """Enqueue ``fly deploy --remote-only`` in ``app_dir`` (task ``atlas.fly.deploy``).

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
    for name, value in (
        ("activity_timeout_s", activity_timeout_s),
        ("max_timeout_s", max_timeout_s),
    ):
        if value is not None and not value > 0:
            raise validation_error(name, "must be a positive number of seconds")
    from atlas_tasks.celery_app import get_app  # row 8: imported only when enqueueing

    app = get_app()
    cap = max_timeout_s or get_settings().fly_deploy_max_timeout_s
    ticket = new_ticket()
    app.send_task(
        C.TASK_FLY_DEPLOY,
        args=[
            ticket,
            None if project_path is None else str(project_path),
            str(app_dir),
            activity_timeout_s,
            max_timeout_s,
        ],
        task_id=f"atlas-fly-{ticket}",
        # The runner's own cap kills flyctl first; the hard limit is the backstop
        # (the app-wide default is sized for spawns and would cut a long deploy short).
        time_limit=cap + C.FLY_DEPLOY_TIME_LIMIT_MARGIN_S,
        soft_time_limit=cap + C.FLY_DEPLOY_TIME_LIMIT_MARGIN_S / 2,
    )
    return ticket


def subscribe_deploy(
    ticket: str, *, timeout: float | None = None, redis_url: str | None = None
) -> Iterator[Event]:
    """Events of a deploy ticket: what was recorded so far, then live, until ``exit``.

    Types: ``started``, ``line`` (``data["line"]``, ``data["n"]``), ``exit``
    (``data["ok"]``, ``data["code"]``, ``data["error"]``; read it with
    :meth:`atlas_tasks.fly.store.DeployExit.from_data`).

    Args:
        timeout: stop after this many seconds without an event (``None`` = never; a
            deploy whose worker died never sends ``exit``).
    """
    return events.subscribe(
        ticket, topic="deploy", timeout=timeout, until=(str(DeployEvent.EXIT),), redis_url=redis_url
    )


def stream_deploy(
    project_path: str | os.PathLike[str] | None,
    app_dir: str | os.PathLike[str],
    ticket: str | None = None,
    *,
    on_line: Callable[[str], None] | None = None,
    activity_timeout_s: float | None = None,
    max_timeout_s: float | None = None,
    kill_grace_s: float = C.FLY_DEPLOY_KILL_GRACE_S,
    settings: AtlasSettings | None = None,
) -> DeployResult:
    """Run a deploy **in this process**, publishing on ``ticket`` when one is given.

    :func:`atlas_tasks.fly.service.stream_deploy` with the process-wide dependencies.

    Raises:
        AtlasError: validation / unsupported / timeout / provider (see
            :mod:`atlas_tasks.fly.deploy`), after the ``exit`` event was published.
    """
    return service.stream_deploy(
        Dependencies.default(settings),
        project_path,
        app_dir,
        ticket,
        on_line=on_line,
        activity_timeout_s=activity_timeout_s,
        max_timeout_s=max_timeout_s,
        kill_grace_s=kill_grace_s,
    )


# ----------------------------------------------------------------------------- logs


def start_log_streamer(app: str) -> None:
    """Enqueue ``app``'s logs streamer (a no-op task when one already runs)."""
    from atlas_tasks.celery_app import get_app  # row 8: imported only when enqueueing

    check_app(app)
    get_app().send_task(C.TASK_FLY_LOGS_POLL, args=[app])


def ensure_streamer(app: str, start: Starter, *, client: redis.Redis | None = None) -> bool:
    """Enqueue a streamer for ``app`` unless one holds the lock (or is being started).

    Returns True when a start was enqueued.
    """
    r = client or get_redis()
    if store.streamer_running(r, app):
        return False
    if not store.mark_start(r, app):
        return False
    start(app)
    return True


def _unauthorized_message(app: str, data: dict[str, Any]) -> str:
    detail = str(data.get("message") or "unauthorized")
    return (
        f"fly logs of {app!r}: the streamer has no valid Fly token ({detail}). "
        f"Provide one through the token chain: {TOKEN_CHAIN}"
    )


def _now_ms(deps: Dependencies) -> int:
    return int(deps.clock() * 1000)


def subscribe(
    app: str,
    start: Starter,
    *,
    timeout: float | None = None,
    redis_url: str | None = None,
    settings: AtlasSettings | None = None,
) -> Generator[LogEntry, None, None]:
    """Yield ``app``'s log entries as its streamer publishes them.

    Registers a subscriber (deadline refreshed while iterating, removed on close), makes
    sure a streamer runs (``start(app)`` when the lock is free; checked again every half
    lease, so a dead streamer is replaced), and yields each entry of every ``logs`` batch
    published after the registration. A streamer that starts fresh (no cursor) first
    fetches Fly's latest entries (up to 100), like ``fly logs`` does, so the first
    subscriber of an idle app sees recent history; later subscribers of a running
    streamer see only what arrives after they joined.

    Args:
        timeout: stop after this many seconds without an entry (``None`` = never).

    Raises:
        UnauthorizedError: the streamer's polls are refused for want of a valid Fly token
            (the message names the token chain to fix it).
    """
    check_app(app)
    settings = settings or get_settings()
    deps = Dependencies.from_client(get_redis(redis_url), settings=settings)
    r = deps.redis
    sub_id = uuid.uuid4().hex
    ttl_ms = C.FLY_LOGS_SUBSCRIBER_TTL_MS
    check_every = max(0.2, min(settings.fly_logs_lease_s / 2, ttl_ms / 3000))
    # Entries published from now on are ours: remember the stream position first, then
    # register, so a batch committed in between is replayed rather than lost.
    after = store.last_logs_event_id(r, app)
    store.register_subscriber(r, app, sub_id, now_ms=_now_ms(deps), ttl_ms=ttl_ms)
    idle_since = deps.monotonic()
    try:
        ensure_streamer(app, start, client=r)
        while True:
            checked = deps.monotonic()
            stream_events = events.subscribe(
                app, topic="logs", after=after, timeout=check_every, redis_url=redis_url
            )
            try:
                for event in stream_events:
                    after = event.id or after
                    if event.type == LogsEvent.LOGS:
                        for raw in event.data.get("entries", []):
                            try:
                                entry = LogEntry.model_validate(raw)
                            except ValueError:
                                continue
                            idle_since = deps.monotonic()
                            yield entry
                    elif event.type == LogsEvent.STOPPED:
                        ensure_streamer(app, start, client=r)
                    elif event.type == LogsEvent.ERROR and event.data.get("kind") == "unauthorized":
                        raise UnauthorizedError(
                            _unauthorized_message(app, event.data), provider="fly"
                        )
                    if deps.monotonic() - checked >= check_every:
                        break  # time to refresh the registration; resume after `after`
            finally:
                # a generator: close it here so its pubsub connection is released now
                getattr(stream_events, "close", lambda: None)()
            if timeout is not None and deps.monotonic() - idle_since >= timeout:
                return
            store.register_subscriber(r, app, sub_id, now_ms=_now_ms(deps), ttl_ms=ttl_ms)
            ensure_streamer(app, start, client=r)
    finally:
        try:
            store.unregister_subscriber(r, app, sub_id)
        except redis.RedisError:
            pass  # the registration expires on its own


def subscribe_logs(
    app: str, *, timeout: float | None = None, redis_url: str | None = None
) -> Generator[LogEntry, None, None]:
    """Log entries of ``app`` from now on, across the cluster.

    Registers this subscriber in Redis while it iterates and makes sure the app's single
    streamer runs (see :mod:`atlas_tasks.fly.service`). Close the iterator (or let it go)
    to unsubscribe; the streamer stops when no subscriber is left.

    Args:
        timeout: stop after this many seconds without an entry (``None`` = never).
    """
    return subscribe(app, start_log_streamer, timeout=timeout, redis_url=redis_url)


def streamer_holder(app: str, *, redis_url: str | None = None) -> str | None:
    """Owner token of ``app``'s running streamer, or ``None`` (operators, tests)."""
    return store.holder(get_redis(redis_url), app)


__all__ = [
    "TOKEN_CHAIN",
    "Starter",
    "ensure_streamer",
    "enqueue_deploy",
    "new_ticket",
    "start_log_streamer",
    "stream_deploy",
    "streamer_holder",
    "subscribe",
    "subscribe_deploy",
    "subscribe_logs",
]
