"""The Fly feature's logic, Celery-free: deploys and the single-instance logs streamer.

Every function takes an :class:`~atlas_tasks.deps.Dependencies` (Redis, settings, event
publisher, clocks, sleep) instead of reading module globals; whatever Celery does for it
(re-enqueueing the next streamer slice) is a callable passed in. The thin tasks in
:mod:`atlas_tasks.tasks.fly` make one call each into this module; unit tests call it with
``Dependencies.from_client(...)``, a fake flyctl runner and a fake logs fetcher.

**Deploy** (:func:`deploy`, :func:`stream_deploy`): the flyctl runner
(:func:`atlas_tasks.fly.deploy.run_deploy`) with its output published on the ticket's
``deploy`` topic: ``started``, one ``line`` per output line, and always a final ``exit``
(:class:`~atlas_tasks.fly.store.DeployExit`).

**Logs streamer** (:func:`poll_logs`, :func:`run_slice`): one execution of the chain takes
(or, when re-enqueued by itself, renews) the app's lock, polls the logs API every
``ATLAS_FLY_LOGS_POLL_INTERVAL_S`` for one slice (``ATLAS_FLY_LOGS_SLICE_S``), then asks
for the next slice with the same owner token. Slices keep every task short, so a warm
shutdown never waits long and the chain moves to whichever worker is free; the lock (an
owner-token :class:`~atlas_tasks.lease.Lease`), not a task id, keeps it single-instance.

* The lock's lease (``ATLAS_FLY_LOGS_LEASE_S``) is renewed by every poll. A streamer whose
  lease ran out (frozen or killed worker) finds it gone and exits; every publish and cursor
  move is fenced on it inside one Lua call (:func:`atlas_tasks.fly.store.commit`), so a
  zombie can write nothing.
* The batch's publish and the cursor move are one Lua call: a streamer killed before it
  leaves the cursor where it was (the successor fetches the same page again, nothing was
  published); killed after, both happened. A restart neither repeats nor drops entries.
* The commit publishes only while a live subscriber exists; before that the cursor advances
  silently. When the last subscriber is gone the streamer publishes ``stopped``, deletes
  its cursor (a later subscriber wants the present, not a backlog) and releases the lock.
  A streamer started with nobody subscribed stops after ``FLY_LOGS_IDLE_STOP_MS``.
* A poll refused for want of a valid token publishes ``error`` ``{"kind", "message"}``:
  subscribers raise it rather than wait forever on a streamer that can fetch nothing.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, Unpack

from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import AtlasError
from atlas_tasks.fly import store
from atlas_tasks.fly.deploy import DeployLimits, DeployResult, error_of, run_deploy
from atlas_tasks.fly.logs import LogPage, LogsClient
from atlas_tasks.fly.store import DeployEvent, DeployExit, LogsEvent, StreamerOutcome
from atlas_tasks.lease import Lease, new_owner_token

log = logging.getLogger(__name__)

#: ``fetch(app, next_token) -> LogPage``: what the streamer polls (a LogsClient by default).
Fetcher = Callable[[str, str | None], LogPage]

#: ``enqueue_next(app, owner, had_subscriber, alone_since_ms)``: schedule the next slice.
NextSlice = Callable[[str, str, bool, "int | None"], None]


class DeployRunner(Protocol):
    """Runs flyctl (:func:`atlas_tasks.fly.deploy.run_deploy`; a fake in unit tests)."""

    def __call__(
        self,
        app_dir: str | os.PathLike[str],
        *,
        project_path: str | os.PathLike[str] | None = None,
        on_line: Callable[[str], None] | None = None,
        settings: AtlasSettings | None = None,
        **limits: Unpack[DeployLimits],
    ) -> DeployResult: ...


# ----------------------------------------------------------------------------- deploy


def stream_deploy(
    deps: Dependencies,
    project_path: str | os.PathLike[str] | None,
    app_dir: str | os.PathLike[str],
    ticket: str | None = None,
    *,
    on_line: Callable[[str], None] | None = None,
    runner: DeployRunner = run_deploy,
    **limits: Unpack[DeployLimits],
) -> DeployResult:
    """Run a deploy, publishing its output on the ``deploy`` topic of ``ticket``.

    Events (id ``ticket``): ``started``, then ``line`` ``{"line": text, "n": 1, 2, ...}``
    per non-empty line as it arrives, and always a final ``exit`` (:class:`DeployExit`:
    ``{"ok", "code", "error"}``; ``code`` is flyctl's exit code when it exited by itself).
    Without a ticket nothing is published (``on_line`` still runs). ``limits``
    (:class:`~atlas_tasks.fly.deploy.DeployLimits`) reach the runner as they are.

    Raises:
        AtlasError: as :func:`~atlas_tasks.fly.deploy.run_deploy`, after ``exit`` was
            published; any other exception becomes kind ``unknown``.
    """
    seq = 0

    def publish_line(line: str) -> None:
        nonlocal seq
        seq += 1
        if ticket is not None:
            deps.publish(ticket, str(DeployEvent.LINE), {"line": line, "n": seq}, topic="deploy")
        if on_line is not None:
            on_line(line)

    def publish_exit(outcome: DeployExit) -> None:
        if ticket is not None:
            deps.publish(ticket, str(DeployEvent.EXIT), outcome.to_data(), topic="deploy")

    if ticket is not None:
        deps.publish(ticket, str(DeployEvent.STARTED), {"app_dir": str(app_dir)}, topic="deploy")
    try:
        result = runner(
            app_dir,
            project_path=project_path,
            on_line=publish_line,
            settings=deps.settings,
            **limits,
        )
    except BaseException as exc:
        err = error_of(exc)
        publish_exit(DeployExit.failed(err))
        if isinstance(exc, AtlasError) or not isinstance(exc, Exception):
            raise  # AtlasErrors as they are; KeyboardInterrupt/SystemExit untouched
        raise err from exc
    publish_exit(DeployExit(ok=True, code=result.code))
    return result


def deploy(
    deps: Dependencies,
    ticket: str,
    project_path: str | None,
    app_dir: str,
    activity_timeout_s: float | None = None,
    max_timeout_s: float | None = None,
    *,
    runner: DeployRunner = run_deploy,
) -> dict[str, Any]:
    """The deploy task's body: :func:`stream_deploy` for ``ticket``, outcome as a dict.

    A failure is returned, not raised: its message may quote flyctl output (secrets), so
    only its kind is logged and only its first line goes into the result (Flower shows
    it); the ticket's ``exit`` event carries the whole message.
    """
    try:
        result = stream_deploy(
            deps,
            project_path,
            app_dir,
            ticket,
            activity_timeout_s=activity_timeout_s,
            max_timeout_s=max_timeout_s,
            runner=runner,
        )
    except AtlasError as exc:
        log.warning(
            "fly deploy %s failed: %s%s",
            ticket,
            exc.kind,
            f" (exit code {exc.status})" if exc.status is not None else "",
        )
        outcome = DeployExit.failed(exc)
        error = dict(outcome.error or {})
        error["message"] = str(error.get("message") or "").split("\n", 1)[0]
        return {"ticket": ticket, "ok": False, "code": outcome.code, "error": error}
    return {
        "ticket": ticket,
        "ok": True,
        "code": result.code,
        "lines": result.lines,
        "duration_s": round(result.duration_s, 3),
    }


# ----------------------------------------------------------------------------- logs streamer


@dataclass
class SliceResult:
    """What one slice of the streamer did (the poll task's result)."""

    app: str
    outcome: StreamerOutcome
    owner: str | None = None
    polls: int = 0
    published: int = 0
    skipped: int = 0
    errors: int = 0
    had_subscriber: bool = False
    alone_since_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        data = asdict(self)
        data["outcome"] = str(self.outcome)
        return data


def new_owner(hostname: str | None = None) -> str:
    """An owner token for a new streamer chain (the worker name helps operators)."""
    return new_owner_token(hostname or "local")


def streamer_lease(deps: Dependencies, app: str, owner: str) -> Lease:
    """``app``'s streamer lock held (or to be taken) by ``owner``, with the configured TTL."""
    return store.streamer_lease(deps.redis, app, owner, _lease_ms(deps.settings))


def _lease_ms(settings: AtlasSettings) -> int:
    return int(settings.fly_logs_lease_s * 1000)


def _now_ms(deps: Dependencies) -> int:
    return int(deps.clock() * 1000)


def default_fetcher(settings: AtlasSettings) -> Fetcher:
    """A fetcher backed by a :class:`LogsClient` (token chain, ``ATLAS_FLY_API_URL``)."""
    client = LogsClient(settings=settings)
    return lambda app, cursor: client.fetch(app, next_token=cursor)


_fetchers: dict[str, Fetcher] = {}
_fetchers_lock = threading.Lock()


def shared_fetcher(settings: AtlasSettings) -> Fetcher:
    """One pooled logs client per API URL for the whole worker process."""
    with _fetchers_lock:
        fetcher = _fetchers.get(settings.fly_api_url)
        if fetcher is None:
            fetcher = _fetchers[settings.fly_api_url] = default_fetcher(settings)
        return fetcher


def run_slice(
    deps: Dependencies,
    app: str,
    owner: str,
    *,
    had_subscriber: bool = False,
    alone_since_ms: int | None = None,
    fetch: Fetcher | None = None,
    slice_s: float | None = None,
) -> SliceResult:
    """Poll ``app``'s logs for one slice while holding its lock (``owner`` must hold it).

    Returns a :class:`SliceResult` whose ``outcome`` is ``continue`` (schedule the next
    slice with the returned ``had_subscriber`` / ``alone_since_ms``), ``stopped`` (no
    subscriber left; lock released) or ``lost_lock`` (another streamer owns the app).
    Fetch errors are logged (kind only) and the cursor is kept; the next poll retries.
    """
    settings, r = deps.settings, deps.redis
    fetch = fetch or shared_fetcher(settings)
    lease = streamer_lease(deps, app, owner)
    interval = settings.fly_logs_poll_interval_s
    end = deps.monotonic() + (slice_s if slice_s is not None else settings.fly_logs_slice_s)
    result = SliceResult(
        app=app,
        outcome=StreamerOutcome.CONTINUE,
        owner=owner,
        had_subscriber=had_subscriber,
        alone_since_ms=alone_since_ms,
    )
    while True:
        if not lease.renew():
            result.outcome = StreamerOutcome.LOST_LOCK
            return result
        now = _now_ms(deps)
        if store.live_subscribers(r, app, now) > 0:
            result.had_subscriber, result.alone_since_ms = True, None
        elif result.had_subscriber:
            store.stop(r, app, owner, "no_subscribers")
            result.outcome = StreamerOutcome.STOPPED
            return result
        else:
            result.alone_since_ms = result.alone_since_ms or now
            if now - result.alone_since_ms >= C.FLY_LOGS_IDLE_STOP_MS:
                store.stop(r, app, owner, "never_subscribed")
                result.outcome = StreamerOutcome.STOPPED
                return result
        full_page = False
        try:
            page = fetch(app, store.cursor(r, app))
        except AtlasError as exc:
            result.errors += 1
            log.warning(
                "fly logs of %s: poll failed (%s%s)",
                app,
                exc.kind,
                f", HTTP {exc.status}" if exc.status else "",
            )
            if exc.kind == "unauthorized":
                # Retrying cannot help until someone provides a token: tell subscribers.
                deps.publish(
                    app,
                    str(LogsEvent.ERROR),
                    {"kind": exc.kind, "message": exc.message},
                    topic="logs",
                )
        else:
            result.polls += 1
            status, _ = store.commit(
                r,
                app,
                owner,
                lease_ms=_lease_ms(settings),
                entries=[e.model_dump(mode="json") for e in page.entries],
                next_cursor=page.next_token,
                now_ms=_now_ms(deps),
            )
            if status < 0:
                result.outcome = StreamerOutcome.LOST_LOCK
                return result
            if status == 1:
                result.published += len(page.entries)
            else:
                result.skipped += len(page.entries)
            full_page = len(page.entries) >= C.FLY_LOGS_PAGE_SIZE
        remaining = end - deps.monotonic()
        if remaining <= 0:
            return result
        if not full_page:  # a full page means a backlog: fetch the next one at once
            deps.sleep(min(interval, remaining))


def poll_logs(
    deps: Dependencies,
    app: str,
    owner: str | None = None,
    had_subscriber: bool = False,
    alone_since_ms: int | None = None,
    *,
    enqueue_next: NextSlice,
    hostname: str | None = None,
    fetch: Fetcher | None = None,
    slice_s: float | None = None,
) -> dict[str, Any]:
    """The logs-poll task's body: one slice of ``app``'s streamer chain.

    Without ``owner`` this is a fresh chain: it takes the lock or, when another streamer
    holds it, returns ``{"outcome": "locked"}`` at once. After a ``continue`` slice it calls
    ``enqueue_next``; if that fails the lock is released, so a subscriber starts a fresh
    chain at once instead of after the lease.
    """
    if owner is None:
        owner = new_owner(hostname)
        if not streamer_lease(deps, app, owner).acquire():
            return {"app": app, "outcome": str(StreamerOutcome.LOCKED)}
    result = run_slice(
        deps,
        app,
        owner,
        had_subscriber=had_subscriber,
        alone_since_ms=alone_since_ms,
        fetch=fetch,
        slice_s=slice_s,
    )
    if result.outcome is StreamerOutcome.CONTINUE:
        try:
            enqueue_next(app, owner, result.had_subscriber, result.alone_since_ms)
        except Exception:
            streamer_lease(deps, app, owner).release()
            raise
    return result.as_dict()


__all__ = [
    "DeployRunner",
    "Fetcher",
    "NextSlice",
    "SliceResult",
    "default_fetcher",
    "deploy",
    "new_owner",
    "poll_logs",
    "run_slice",
    "shared_fetcher",
    "stream_deploy",
    "streamer_lease",
]
