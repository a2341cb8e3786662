"""One logs streamer per Fly app across the whole cluster, and its subscribers.

How it runs: the Celery task ``atlas.fly.logs_poll`` (queue ``fly``) is a
**self-rescheduling chain**. One execution takes (or, when re-enqueued by itself, renews)
the app's lock, polls the logs API every ``ATLAS_FLY_LOGS_POLL_INTERVAL_S`` for one
*slice* (``ATLAS_FLY_LOGS_SLICE_S``, 20 s), then re-enqueues itself with the same owner
token and returns. Slices keep every execution short, so a warm worker shutdown never
waits long, Flower shows the streamer as ordinary short tasks, and the chain moves to
whichever worker is free; a lock rather than a task id keeps it single-instance.

Redis keys (:mod:`atlas_tasks.constants`):

* ``FLY_LOGS_LOCK_KEY`` — ``SET NX PX`` owner token with a lease
  (``ATLAS_FLY_LOGS_LEASE_S``) renewed by every poll. A streamer whose lease ran out
  (frozen or killed worker) finds it gone and exits; every publish and cursor move is
  fenced on it inside one Lua call, so a zombie can write nothing.
* ``FLY_LOGS_CURSOR_KEY`` — the ``next_token`` after the last committed batch. The batch's
  publish and the cursor move are **one Lua call**: a streamer killed before it leaves the
  cursor where it was (the successor fetches the same page again, nothing was published);
  killed after, both happened. So a restart neither repeats nor drops entries.
* ``FLY_LOGS_SUBSCRIBERS_KEY`` — sorted set of subscriber deadlines. The commit publishes
  only when a live subscriber exists (checked inside the same Lua call); before that the
  cursor advances silently. When the last subscriber is gone the streamer publishes
  ``stopped``, deletes its cursor (a later subscriber wants the present, not a backlog)
  and releases the lock. A streamer started with nobody subscribed stops after
  ``FLY_LOGS_IDLE_STOP_MS``.

Events go to topic ``logs`` (:mod:`atlas_tasks.events` keys and message format, so
``events.subscribe(app, topic="logs")`` works too): ``logs`` with
``{"entries": [LogEntry...]}``, ``stopped``, and ``error`` with ``{"kind", "message"}``
when a poll is refused for want of a valid token. Subscribers raise that one as
:class:`~atlas_tasks.errors.UnauthorizedError` naming the token chain, rather than
waiting forever on a streamer that can never fetch anything.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Generator
from dataclasses import asdict, dataclass
from typing import Any, cast

import redis

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.errors import AtlasError, UnauthorizedError
from atlas_tasks.fly.logs import LogEntry, LogPage, LogsClient
from atlas_tasks.fly.token_storage import check_app
from atlas_tasks.redis_conn import get_redis

log = logging.getLogger(__name__)

#: ``fetch(app, next_token) -> LogPage``: what the streamer polls (a LogsClient by default).
Fetcher = Callable[[str, str | None], LogPage]

#: ``start(app)``: enqueue a streamer (the Celery task); replaced in tests.
Starter = Callable[[str], None]

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
return 0
"""

# KEYS: lock, cursor, subscribers, stream, channel
# ARGV: owner, lease_ms, cursor ('' = keep), cursor_ttl_ms, now_ms, payload ('' = none),
#       maxlen, stream_ttl_ms
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {-1, ''} end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', tonumber(ARGV[4]))
end
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[5])
local subs = redis.call('ZCARD', KEYS[3])
if subs == 0 or ARGV[6] == '' then return {0, ''} end
local id = redis.call('XADD', KEYS[4], 'MAXLEN', '~', tonumber(ARGV[7]), '*', 'e', ARGV[6])
redis.call('PEXPIRE', KEYS[4], tonumber(ARGV[8]))
redis.call('PUBLISH', KEYS[5], id .. '|' .. ARGV[6])
return {1, id}
"""

# KEYS: lock, cursor, stream, channel   ARGV: owner, payload, maxlen, stream_ttl_ms
_STOP = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', tonumber(ARGV[3]), '*', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[4]))
redis.call('PUBLISH', KEYS[4], id .. '|' .. ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _now_ms() -> int:
    return int(time.time() * 1000)


def lock_key(app: str) -> str:
    """Redis key of ``app``'s streamer lock."""
    return C.FLY_LOGS_LOCK_KEY.format(app=app)


def cursor_key(app: str) -> str:
    """Redis key of ``app``'s cursor."""
    return C.FLY_LOGS_CURSOR_KEY.format(app=app)


def subscribers_key(app: str) -> str:
    """Redis key of ``app``'s subscriber deadlines."""
    return C.FLY_LOGS_SUBSCRIBERS_KEY.format(app=app)


def new_owner(hostname: str | None = None) -> str:
    """An owner token for a new streamer chain (the worker name helps operators)."""
    return f"{hostname or 'local'}:{uuid.uuid4().hex[:12]}"


def acquire(app: str, owner: str, *, client: redis.Redis | None = None,
            settings: AtlasSettings | None = None) -> bool:
    """Take ``app``'s streamer lock for ``owner``; False if another streamer holds it."""
    settings = settings or get_settings()
    r = client or get_redis()
    return bool(r.set(lock_key(app), owner, nx=True, px=int(settings.fly_logs_lease_s * 1000)))


def renew(app: str, owner: str, *, client: redis.Redis | None = None,
          settings: AtlasSettings | None = None) -> bool:
    """Extend ``owner``'s lease; False when the lock is gone or held by someone else."""
    settings = settings or get_settings()
    r = client or get_redis()
    return bool(r.eval(_RENEW, 1, lock_key(app), owner, int(settings.fly_logs_lease_s * 1000)))


def release(app: str, owner: str, *, client: redis.Redis | None = None) -> None:
    """Drop the lock if ``owner`` still holds it."""
    (client or get_redis()).eval(_RELEASE, 1, lock_key(app), owner)


def holder(app: str, *, client: redis.Redis | None = None) -> str | None:
    """Owner token of ``app``'s running streamer, or ``None``."""
    value = (client or get_redis()).get(lock_key(app))
    return None if value is None else str(value)


def live_subscribers(app: str, *, client: redis.Redis | None = None) -> int:
    """How many subscribers of ``app`` are registered and not expired."""
    r = client or get_redis()
    return int(r.zcount(subscribers_key(app), f"({_now_ms()}", "+inf"))


@dataclass
class SliceResult:
    """What one slice of the streamer did (the poll task's result)."""

    app: str
    outcome: str  # continue | stopped | lost_lock | locked
    owner: str | None = None
    polls: int = 0
    published: int = 0
    skipped: int = 0
    errors: int = 0
    had_subscriber: bool = False
    alone_since_ms: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return asdict(self)


def _event_payload(app: str, type_: str, data: dict[str, Any]) -> str:
    return events.Event(session_id=app, type=type_, data=data).model_dump_json(exclude={"id"})


def commit(app: str, owner: str, entries: list[LogEntry], next_cursor: str | None, *,
           client: redis.Redis | None = None,
           settings: AtlasSettings | None = None) -> tuple[int, str | None]:
    """Move the cursor and (if anyone listens) publish ``entries``, atomically, fenced.

    Returns:
        ``(status, stream_id)``: 1 published, 0 cursor moved silently, -1 lock lost.
    """
    settings = settings or get_settings()
    r = client or get_redis()
    channel, stream = C.EVENT_TOPICS["logs"]
    payload = _event_payload(
        app, "logs", {"entries": [e.model_dump(mode="json") for e in entries]}
    ) if entries else ""
    status, stream_id = cast(list[Any], r.eval(
        _COMMIT, 5, lock_key(app), cursor_key(app), subscribers_key(app),
        stream.format(id=app), channel.format(id=app),
        owner, int(settings.fly_logs_lease_s * 1000), next_cursor or "",
        C.FLY_LOGS_CURSOR_TTL_MS, _now_ms(), payload, C.EVENTS_STREAM_MAXLEN,
        C.EVENTS_STREAM_TTL_MS,
    ))
    return int(status), (str(stream_id) or None)


def stop(app: str, owner: str, reason: str, *, client: redis.Redis | None = None) -> bool:
    """Publish ``stopped``, drop the cursor and the lock (only if ``owner`` holds it)."""
    r = client or get_redis()
    channel, stream = C.EVENT_TOPICS["logs"]
    payload = _event_payload(app, "stopped", {"reason": reason})
    return bool(r.eval(_STOP, 4, lock_key(app), cursor_key(app), stream.format(id=app),
                       channel.format(id=app), owner, payload, C.EVENTS_STREAM_MAXLEN,
                       C.EVENTS_STREAM_TTL_MS))


def default_fetcher(settings: AtlasSettings | None = None) -> Fetcher:
    """A fetcher backed by a :class:`LogsClient` (token chain, ``ATLAS_FLY_API_URL``)."""
    client = LogsClient(settings=settings)
    return lambda app, cursor: client.fetch(app, next_token=cursor)


_fetchers: dict[str, Fetcher] = {}


def _shared_fetcher(settings: AtlasSettings) -> Fetcher:
    # One pooled client per API URL for the whole worker process.
    fetcher = _fetchers.get(settings.fly_api_url)
    if fetcher is None:
        fetcher = _fetchers[settings.fly_api_url] = default_fetcher(settings)
    return fetcher


def run_slice(
    app: str,
    owner: str,
    *,
    had_subscriber: bool = False,
    alone_since_ms: int | None = None,
    fetch: Fetcher | None = None,
    client: redis.Redis | None = None,
    settings: AtlasSettings | None = None,
    sleep: Callable[[float], None] = time.sleep,
    slice_s: float | None = None,
) -> SliceResult:
    """Poll ``app``'s logs for one slice while holding its lock (``owner`` must hold it).

    Returns a :class:`SliceResult` whose ``outcome`` is ``continue`` (re-enqueue the
    chain with the returned ``had_subscriber`` / ``alone_since_ms``), ``stopped`` (no
    subscriber left; lock released) or ``lost_lock`` (another streamer owns the app).
    Fetch errors are logged (kind only) and the cursor is kept; the next poll retries.
    """
    settings = settings or get_settings()
    r = client or get_redis()
    fetch = fetch or _shared_fetcher(settings)
    interval = settings.fly_logs_poll_interval_s
    end = time.monotonic() + (slice_s if slice_s is not None else settings.fly_logs_slice_s)
    result = SliceResult(app=app, outcome="continue", owner=owner,
                         had_subscriber=had_subscriber, alone_since_ms=alone_since_ms)
    while True:
        if not renew(app, owner, client=r, settings=settings):
            result.outcome = "lost_lock"
            return result
        now = _now_ms()
        if live_subscribers(app, client=r) > 0:
            result.had_subscriber, result.alone_since_ms = True, None
        elif result.had_subscriber:
            stop(app, owner, "no_subscribers", client=r)
            result.outcome = "stopped"
            return result
        else:
            result.alone_since_ms = result.alone_since_ms or now
            if now - result.alone_since_ms >= C.FLY_LOGS_IDLE_STOP_MS:
                stop(app, owner, "never_subscribed", client=r)
                result.outcome = "stopped"
                return result
        full_page = False
        cursor = r.get(cursor_key(app))
        try:
            page = fetch(app, None if cursor is None else str(cursor))
        except AtlasError as exc:
            result.errors += 1
            log.warning("fly logs of %s: poll failed (%s%s)", app, exc.kind,
                        f", HTTP {exc.status}" if exc.status else "")
            if exc.kind == "unauthorized":
                # Retrying cannot help until someone provides a token: tell subscribers.
                events.publish(app, "error", {"kind": exc.kind, "message": exc.message},
                               topic="logs", client=r)
        else:
            result.polls += 1
            status, _ = commit(app, owner, page.entries, page.next_token, client=r,
                               settings=settings)
            if status < 0:
                result.outcome = "lost_lock"
                return result
            if status == 1:
                result.published += len(page.entries)
            else:
                result.skipped += len(page.entries)
            full_page = len(page.entries) >= C.FLY_LOGS_PAGE_SIZE
        remaining = end - time.monotonic()
        if remaining <= 0:
            return result
        if not full_page:  # a full page means a backlog: fetch the next one at once
            sleep(min(interval, remaining))


# ---------------------------------------------------------------------- subscriber side

def ensure_streamer(app: str, start: Starter, *, client: redis.Redis | None = None) -> bool:
    """Enqueue a streamer for ``app`` unless one holds the lock (or is being started).

    Returns True when a start was enqueued.
    """
    r = client or get_redis()
    if r.exists(lock_key(app)):
        return False
    if not r.set(C.FLY_LOGS_START_KEY.format(app=app), "1", nx=True,
                 px=C.FLY_LOGS_START_TTL_MS):
        return False
    start(app)
    return True


#: Where a Fly token comes from, in order (:mod:`atlas_tasks.fly.tokens`).
TOKEN_CHAIN = ("ATLAS_FLY_API_TOKEN or FLY_API_TOKEN in the worker's environment, "
               "~/.fly/config.yml (ATLAS_FLY_CONFIG_FILE), `fly tokens create readonly`, "
               "or a manual token (FlyTokens.set_manual)")


def _unauthorized_message(app: str, data: dict[str, Any]) -> str:
    detail = str(data.get("message") or "unauthorized")
    return (f"fly logs of {app!r}: the streamer has no valid Fly token ({detail}). "
            f"Provide one through the token chain: {TOKEN_CHAIN}")


def _register(r: redis.Redis, app: str, sub_id: str, ttl_ms: int) -> None:
    """Push this subscriber's deadline forward; the set itself expires when unused."""
    pipe = r.pipeline(transaction=False)
    pipe.zadd(subscribers_key(app), {sub_id: _now_ms() + ttl_ms})
    pipe.pexpire(subscribers_key(app), 2 * ttl_ms)
    pipe.execute()


def subscribe(
    app: str,
    start: Starter,
    *,
    timeout: float | None = None,
    redis_url: str | None = None,
    settings: AtlasSettings | None = None,
) -> Generator[LogEntry, None, None]:
    """Yield ``app``'s log entries as the streamer publishes them (see module docstring).

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
    r = get_redis(redis_url)
    _, stream = C.EVENT_TOPICS["logs"]
    sub_id = uuid.uuid4().hex
    ttl_ms = C.FLY_LOGS_SUBSCRIBER_TTL_MS
    check_every = max(0.2, min(settings.fly_logs_lease_s / 2, ttl_ms / 3000))
    # Entries published from now on are ours: remember the stream position first, then
    # register, so a batch committed in between is replayed rather than lost.
    last = r.xrevrange(stream.format(id=app), "+", "-", count=1)
    after = str(last[0][0]) if last else "0-0"
    _register(r, app, sub_id, ttl_ms)
    idle_since = time.monotonic()
    try:
        ensure_streamer(app, start, client=r)
        while True:
            checked = time.monotonic()
            stream_events = events.subscribe(app, topic="logs", after=after,
                                             timeout=check_every, redis_url=redis_url)
            try:
                for event in stream_events:
                    after = event.id or after
                    if event.type == "logs":
                        for raw in event.data.get("entries", []):
                            try:
                                entry = LogEntry.model_validate(raw)
                            except ValueError:
                                continue
                            idle_since = time.monotonic()
                            yield entry
                    elif event.type == "stopped":
                        ensure_streamer(app, start, client=r)
                    elif event.type == "error" and event.data.get("kind") == "unauthorized":
                        raise UnauthorizedError(_unauthorized_message(app, event.data),
                                                provider="fly")
                    if time.monotonic() - checked >= check_every:
                        break  # time to refresh the registration; resume after `after`
            finally:
                # a generator: close it here so its pubsub connection is released now
                getattr(stream_events, "close", lambda: None)()
            if timeout is not None and time.monotonic() - idle_since >= timeout:
                return
            _register(r, app, sub_id, ttl_ms)
            ensure_streamer(app, start, client=r)
    finally:
        try:
            r.zrem(subscribers_key(app), sub_id)
        except redis.RedisError:
            pass  # the registration expires on its own


__all__ = [
    "Fetcher",
    "SliceResult",
    "Starter",
    "acquire",
    "commit",
    "cursor_key",
    "default_fetcher",
    "ensure_streamer",
    "holder",
    "live_subscribers",
    "lock_key",
    "new_owner",
    "release",
    "renew",
    "run_slice",
    "stop",
    "subscribe",
    "subscribers_key",
]
