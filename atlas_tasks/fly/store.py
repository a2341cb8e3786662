"""The Fly feature's Redis records and keys, and the Lua that acts on them.

Everything that knows a Fly key layout or a field name lives here; the service
(:mod:`atlas_tasks.fly.service`) and the caller side (:mod:`atlas_tasks.fly.client`) go
through these functions. The key templates themselves are in :mod:`atlas_tasks.constants`
(unchanged by this module):

* ``FLY_LOGS_LOCK_KEY`` — the app's streamer lock: an owner-token :class:`~atlas_tasks.lease.Lease`
  renewed by every poll. The commit and stop scripts below are fenced on it (they embed the
  shared lease Lua), so a streamer whose lease ran out can write nothing.
* ``FLY_LOGS_CURSOR_KEY`` — the logs API ``next_token`` after the last committed batch.
* ``FLY_LOGS_SUBSCRIBERS_KEY`` — sorted set ``subscriber id -> deadline (ms)``.
* ``FLY_LOGS_START_KEY`` — the start *throttle* (see :func:`mark_start`).
* ``FLY_TOKEN_LOCK_KEY`` — the token single-flight lease (:mod:`atlas_tasks.fly.tokens`).

Redis Cluster (the tagged layout): every Fly key, the logs and deploy topics' streams and
channels included, is in the ``fly`` hash-tag group (``atlas:{fly}:fly:logs-lock:<app>``),
so each script touches one slot:

===========  ===================================================  =====
script       KEYS (none is built from ARGV)                       group
===========  ===================================================  =====
``_COMMIT``  lock, cursor, subscribers, logs stream, logs channel  fly
``_STOP``    lock, cursor, logs stream, logs channel               fly
===========  ===================================================  =====

The streamer and token leases are single-key scripts (:mod:`atlas_tasks.lease`), deploy
lines are :func:`atlas_tasks.events.publish` calls (stream + channel of topic ``deploy``,
group ``fly``), :func:`register_subscriber` is a non-transactional pipeline on one key.

Deploy tickets have no record of their own: a ticket *is* its event stream (topic
``deploy``), so the typed parts are the event types (:class:`DeployEvent`) and the final
``exit`` payload (:class:`DeployExit`).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, cast

import redis

from atlas_tasks import constants as C
from atlas_tasks import events
from atlas_tasks.errors import AtlasError
from atlas_tasks.key_groups import FLY_GROUP, fill
from atlas_tasks.keyspace_names import Keyspace, keyspace
from atlas_tasks.lease import LUA_LEASE_FUNCTIONS, Lease


class DeployEvent(StrEnum):
    """Event types of a deploy ticket (topic ``deploy``), in the order they are sent."""

    STARTED = "started"
    LINE = "line"
    EXIT = "exit"


class StreamerOutcome(StrEnum):
    """How one slice of an app's logs streamer ended."""

    CONTINUE = "continue"  # re-enqueue the chain
    STOPPED = "stopped"  # no subscriber left; lock released
    LOST_LOCK = "lost_lock"  # another streamer owns the app
    LOCKED = "locked"  # a fresh chain found the app already streamed


class LogsEvent(StrEnum):
    """Event types of an app's logs topic."""

    LOGS = "logs"
    STOPPED = "stopped"
    ERROR = "error"


@dataclass(frozen=True)
class DeployExit:
    """The final ``exit`` event of a deploy ticket.

    Attributes:
        ok: flyctl exited 0.
        code: flyctl's exit code when it exited by itself (``None`` after a kill / error).
        error: :meth:`AtlasError.to_dict` of the failure, ``None`` on success.
    """

    ok: bool
    code: int | None = None
    error: dict[str, Any] | None = None

    @classmethod
    def failed(cls, err: AtlasError) -> DeployExit:
        """The exit of a deploy that raised ``err`` (``code`` only for a non-zero exit)."""
        return cls(
            ok=False, code=err.status if err.kind == "provider" else None, error=err.to_dict()
        )

    def to_data(self) -> dict[str, Any]:
        """The event's ``data``."""
        return {"ok": self.ok, "code": self.code, "error": self.error}

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> DeployExit:
        """Read an ``exit`` event's ``data`` (missing fields read as a failure)."""
        code = data.get("code")
        error = data.get("error")
        return cls(
            ok=bool(data.get("ok")),
            code=code if isinstance(code, int) else None,
            error=error if isinstance(error, dict) else None,
        )


# ----------------------------------------------------------------------------- keys


def fly_keyspace(namespace: str | None = None) -> Keyspace:
    """The keyspace of every Fly key: the ``fly`` hash-tag group in the tagged layout
    (:mod:`atlas_tasks.key_groups`), the namespace's own keyspace otherwise."""
    return keyspace(namespace).group(FLY_GROUP)


def lock_key(app: str) -> str:
    """Redis key of ``app``'s streamer lock."""
    return fill(fly_keyspace(), C.FLY_LOGS_LOCK_KEY, app=app)


def cursor_key(app: str) -> str:
    """Redis key of ``app``'s cursor."""
    return fill(fly_keyspace(), C.FLY_LOGS_CURSOR_KEY, app=app)


def subscribers_key(app: str) -> str:
    """Redis key of ``app``'s subscriber deadlines."""
    return fill(fly_keyspace(), C.FLY_LOGS_SUBSCRIBERS_KEY, app=app)


def start_key(app: str) -> str:
    """Redis key of ``app``'s streamer start throttle."""
    return fill(fly_keyspace(), C.FLY_LOGS_START_KEY, app=app)


def token_lock_key(app: str) -> str:
    """Redis key of ``app``'s token single-flight lease."""
    return fill(fly_keyspace(), C.FLY_TOKEN_LOCK_KEY, app=app)


def _logs_stream(app: str) -> tuple[str, str]:
    return events.topic_keys(app, "logs")


# ----------------------------------------------------------------------------- streamer lock


def streamer_lease(client: redis.Redis, app: str, owner: str, ttl_ms: int) -> Lease:
    """``app``'s streamer lock as a :class:`Lease` held (or to be taken) by ``owner``."""
    return Lease(client, lock_key(app), ttl_ms, owner=owner)


def holder(client: redis.Redis, app: str) -> str | None:
    """Owner token of ``app``'s running streamer, or ``None``."""
    value: Any = client.get(lock_key(app))
    return None if value is None else str(value)


# KEYS: lock, cursor, subscribers, stream, channel
# ARGV: owner, lease_ms, cursor ('' = keep), cursor_ttl_ms, now_ms, payload ('' = none),
#       maxlen, stream_ttl_ms
_COMMIT = (
    LUA_LEASE_FUNCTIONS
    + """
if lease_renew(KEYS[1], ARGV[1], ARGV[2]) == 0 then return {-1, ''} end
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
)

# KEYS: lock, cursor, stream, channel   ARGV: owner, payload, maxlen, stream_ttl_ms
_STOP = (
    LUA_LEASE_FUNCTIONS
    + """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[2])
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', tonumber(ARGV[3]), '*', 'e', ARGV[2])
redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[4]))
redis.call('PUBLISH', KEYS[4], id .. '|' .. ARGV[2])
lease_release(KEYS[1], ARGV[1])
return 1
"""
)


def commit(
    client: redis.Redis,
    app: str,
    owner: str,
    *,
    lease_ms: int,
    entries: list[dict[str, Any]],
    next_cursor: str | None,
    now_ms: int,
) -> tuple[int, str | None]:
    """Renew the lock, move the cursor and (if anyone listens) publish ``entries``: one
    atomic script, fenced on ``owner`` holding the lock.

    Args:
        entries: JSON-safe log entries (an empty list publishes nothing).
        next_cursor: the page's ``next_token`` (``None`` keeps the cursor).
        now_ms: subscribers whose deadline is before this are dropped first.

    Returns:
        ``(status, stream_id)``: 1 published, 0 cursor moved silently, -1 lock lost.
    """
    channel, stream = _logs_stream(app)
    payload = events.encode(app, LogsEvent.LOGS, {"entries": entries}) if entries else ""
    status, stream_id = cast(
        list[Any],
        client.eval(
            _COMMIT,
            5,
            lock_key(app),
            cursor_key(app),
            subscribers_key(app),
            stream,
            channel,
            owner,
            lease_ms,
            next_cursor or "",
            C.FLY_LOGS_CURSOR_TTL_MS,
            now_ms,
            payload,
            C.EVENTS_STREAM_MAXLEN,
            C.EVENTS_STREAM_TTL_MS,
        ),
    )
    return int(status), (str(stream_id) or None)


def stop(client: redis.Redis, app: str, owner: str, reason: str) -> bool:
    """Publish ``stopped``, drop the cursor and the lock, only if ``owner`` holds the lock."""
    channel, stream = _logs_stream(app)
    payload = events.encode(app, LogsEvent.STOPPED, {"reason": reason})
    return bool(
        client.eval(
            _STOP,
            4,
            lock_key(app),
            cursor_key(app),
            stream,
            channel,
            owner,
            payload,
            C.EVENTS_STREAM_MAXLEN,
            C.EVENTS_STREAM_TTL_MS,
        )
    )


def cursor(client: redis.Redis, app: str) -> str | None:
    """``app``'s cursor (the logs API ``next_token``), or ``None`` for "start fresh"."""
    value: Any = client.get(cursor_key(app))
    return None if value is None else str(value)


# ----------------------------------------------------------------------------- subscribers


def live_subscribers(client: redis.Redis, app: str, now_ms: int) -> int:
    """How many subscribers of ``app`` have a deadline after ``now_ms``."""
    return int(client.zcount(subscribers_key(app), f"({now_ms}", "+inf"))


def register_subscriber(
    client: redis.Redis, app: str, sub_id: str, *, now_ms: int, ttl_ms: int
) -> None:
    """Push ``sub_id``'s deadline to ``now_ms + ttl_ms``; the set expires when unused."""
    pipe = client.pipeline(transaction=False)
    pipe.zadd(subscribers_key(app), {sub_id: now_ms + ttl_ms})
    pipe.pexpire(subscribers_key(app), 2 * ttl_ms)
    pipe.execute()


def unregister_subscriber(client: redis.Redis, app: str, sub_id: str) -> None:
    """Remove ``sub_id`` (its registration would expire on its own anyway)."""
    client.zrem(subscribers_key(app), sub_id)


def last_logs_event_id(client: redis.Redis, app: str) -> str:
    """Id of the newest event on ``app``'s logs stream (``0-0`` when there is none)."""
    _, stream = _logs_stream(app)
    last: Any = client.xrevrange(stream, "+", "-", count=1)
    return str(last[0][0]) if last else "0-0"


def streamer_running(client: redis.Redis, app: str) -> bool:
    """True while some streamer holds ``app``'s lock."""
    return bool(client.exists(lock_key(app)))


def mark_start(client: redis.Redis, app: str) -> bool:
    """Claim the right to enqueue ``app``'s streamer for ``FLY_LOGS_START_TTL_MS``.

    This is a **throttle, not a lock** (hence a plain ``SET NX PX "1"`` rather than a
    :class:`~atlas_tasks.lease.Lease`): nobody owns, renews or releases it; it only keeps
    many subscribers that all see the streamer lock free at the same moment from enqueueing
    a burst of starts. Single-instance streaming is the streamer lock's job: a surplus
    start that slips through finds the lock taken and returns ``locked``.
    """
    return bool(client.set(start_key(app), "1", nx=True, px=C.FLY_LOGS_START_TTL_MS))


__all__ = [
    "DeployEvent",
    "DeployExit",
    "LogsEvent",
    "StreamerOutcome",
    "commit",
    "cursor",
    "cursor_key",
    "fly_keyspace",
    "holder",
    "last_logs_event_id",
    "live_subscribers",
    "lock_key",
    "mark_start",
    "register_subscriber",
    "start_key",
    "streamer_lease",
    "streamer_running",
    "stop",
    "subscribers_key",
    "token_lock_key",
    "unregister_subscriber",
]
