"""Cluster-wide events: Redis pub/sub for live delivery plus a capped Redis Stream per
session for replay.

A session's replay log is compacted when it starts running: the stream is emptied in the
same step that publishes ``running`` (the spawn's progress events go), and replay rebuilds
that ``running`` event, with its original stream id, from the session record. The meter
keeps only its latest ``cost`` event in the log (each carries the running total). Both
keep a running session's Redis footprint small (``bench/RESULTS.md``, Memory) while a
late or reconnecting subscriber still starts from the session's current state.

A publish is one Lua call that appends to the stream (``XADD MAXLEN ~``) and publishes
``"<stream id>|<json>"`` on the channel, so the two can never disagree on order.
:func:`subscribe` first SUBSCRIBEs, then replays the stream, then follows live messages,
skipping any live message whose stream id it already replayed: a browser that connects
late or reconnects misses nothing and sees nothing twice. Heartbeats are published by
``touch()`` on the channel only (id ``-``); they are not worth replaying.

Publishing is best-effort: a Redis hiccup is logged and never fails a task. Reading
(``history``, ``subscribe``) raises :class:`~atlas_tasks.errors.TransportError` when
Redis fails, like every caller-facing call.

Channels and streams are named in the deployment's namespace (``ATLAS_NAMESPACE``,
:mod:`atlas_tasks.keyspace_names`): ``<namespace>:events:{id}``, ``<namespace>:events-log:{id}``.

Redis Cluster (the tagged layout, :func:`topic_keyspace`): a topic's stream and channel
carry the hash tag of the records its scripts change in the same step, since those
scripts declare both (``KEYS``) beside the records: a session's are in its registry shard
(``<ns>:{s<k>}:events-log:<id>``), a job's in ``{jobs}``, deploy tickets' and app logs'
in ``{fly}``. :data:`_PUBLISH` declares one topic's stream and channel only. (A channel is
not a key for pub/sub itself: ``PUBLISH`` reaches every node's subscribers.)
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any, cast

import redis
from pydantic import BaseModel, Field

from atlas_tasks import constants as C
from atlas_tasks.config import get_settings
from atlas_tasks.errors import ValidationError
from atlas_tasks.key_groups import FLY_GROUP, JOBS_GROUP, fill
from atlas_tasks.keyspace_names import Keyspace, keyspace
from atlas_tasks.redis_conn import (
    async_client_for_url,
    async_pubsub_client_for_url,
    get_redis,
    is_cluster_url,
    pubsub_client_for_url,
    wrap_redis_errors,
)

log = logging.getLogger(__name__)

#: Event types of a compute session (the seed's PubSub events).
COMPUTE_EVENT_TYPES = ("status", "heartbeat", "terminating", "terminate_failed")

#: Lua function other scripts embed to publish an event in the same atomic step as a state
#: change (the registry's terminate transitions): append to the replay stream, re-arm its
#: TTL, publish ``"<stream id>|<json>"``.
EMIT_LUA = f"""
local function emit(stream, channel, payload)
  local id = redis.call('XADD', stream, 'MAXLEN', '~', {C.EVENTS_STREAM_MAXLEN}, '*', 'e', payload)
  redis.call('PEXPIRE', stream, {C.EVENTS_STREAM_TTL_MS})
  redis.call('PUBLISH', channel, id .. '|' .. payload)
  return id
end
"""

_PUBLISH = EMIT_LUA + "return emit(KEYS[1], KEYS[2], ARGV[1])\n"


class Event(BaseModel):
    """One event. ``session_id`` is the topic id (session, job or deploy ticket)."""

    session_id: str
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    ts: float = Field(default_factory=time.time)
    id: str | None = None

    def __str__(self) -> str:
        return f"{self.session_id} {self.type} {json.dumps(self.data, default=str)}"


def _keys(topic: str, topic_id: str, namespace: str | None = None) -> tuple[str, str]:
    try:
        channel, stream = C.EVENT_TOPICS[topic]
    except KeyError:
        raise ValidationError(
            f"topic: unknown event topic {topic!r}; known: {', '.join(C.EVENT_TOPICS)}",
            field="topic",
        ) from None
    ks = topic_keyspace(topic, topic_id, namespace)
    return fill(ks, channel, id=topic_id), fill(ks, stream, id=topic_id)


#: Hash-tag group of each topic but ``compute`` (tagged layout): a topic's stream and
#: channel share the slot of the records the topic's scripts update in the same step
#: (a job's commit appends to the job's stream; a streamer's commit to its app's).
_TOPIC_GROUPS = {"job": JOBS_GROUP, "deploy": FLY_GROUP, "logs": FLY_GROUP}


def topic_keyspace(topic: str, topic_id: str, namespace: str | None = None) -> Keyspace:
    """The keyspace of a topic's channel and stream in ``namespace`` (default
    ``ATLAS_NAMESPACE``): a session's (``compute``) live in its registry shard, beside
    its record; a job's in the ``jobs`` group, deploy tickets and app logs in ``fly``.
    The namespace's own keyspace in the untagged layout (names unchanged)."""
    ks = keyspace(namespace)  # ATLAS_NAMESPACE unless the caller's store names one
    if topic == SESSION_TOPIC:
        return ks.shard_of(topic_id)
    return ks.group(_TOPIC_GROUPS[topic])


#: The topic of session events (whose stream and channel follow the session's shard).
SESSION_TOPIC = "compute"


def session_channel_pattern(namespace: str | None = None) -> str:
    """The ``PSUBSCRIBE`` pattern matching every session's event channel in
    ``namespace``: ``atlas:events:*``, or ``atlas:{s*}:events:*`` in the tagged layout
    (each channel carries its shard's hash tag)."""
    ks = keyspace(namespace)
    if ks.tagged:
        return ks.key(C.EVENTS_CHANNEL_PATTERN).replace(ks.prefix, ks.prefix + "{s*}:", 1)
    return ks.key(C.EVENTS_CHANNEL_PATTERN)


def publish(
    topic_id: str,
    type: str,
    data: dict[str, Any] | None = None,
    *,
    topic: str = "compute",
    client: redis.Redis | None = None,
    namespace: str | None = None,
) -> str | None:
    """Record and broadcast an event. Returns its stream id, or ``None`` if Redis failed.

    ``namespace``: the deployment's (default ``ATLAS_NAMESPACE``)."""
    channel, stream = _keys(topic, topic_id, namespace)
    payload = encode(topic_id, type, data)
    r = client or get_redis()
    try:
        return str(r.eval(_PUBLISH, 2, stream, channel, payload))
    except redis.RedisError as exc:  # best effort: never fail the task over an event
        log.warning("could not publish %s event for %s: %s", type, topic_id, exc)
        return None


def encode(topic_id: str, type: str, data: dict[str, Any] | None = None) -> str:
    """The wire form of an event (what :data:`EMIT_LUA` ``emit`` publishes)."""
    return Event(session_id=topic_id, type=type, data=data or {}).model_dump_json(exclude={"id"})


def topic_keys(
    topic_id: str, topic: str = "compute", *, namespace: str | None = None
) -> tuple[str, str]:
    """``(pub/sub channel, replay stream)`` of a topic id in ``namespace`` (default:
    ``ATLAS_NAMESPACE``)."""
    return _keys(topic, topic_id, namespace)


def _stream_id(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def _parse_live(raw: str) -> Event | None:
    sid, _, body = raw.partition("|")
    try:
        event = Event.model_validate_json(body)
    except ValueError:
        log.warning("dropping malformed event message")
        return None
    event.id = None if sid == "-" else sid
    return event


def _parse_entry(entry_id: str, fields: dict[str, str]) -> Event | None:
    try:
        event = Event.model_validate_json(fields["e"])
    except (KeyError, ValueError):
        return None
    event.id = entry_id
    return event


def _replay_start(after: str | None) -> str:
    """XRANGE's start: just after the stream id ``after`` (exclusive), else the beginning."""
    return f"({after}" if after else "-"


@wrap_redis_errors("events.history")
def history(
    topic_id: str,
    *,
    topic: str = "compute",
    client: redis.Redis | None = None,
    after: str | None = None,
    namespace: str | None = None,
) -> list[Event]:
    """Events recorded for ``topic_id`` (oldest first), optionally after a stream id, in
    ``namespace`` (default ``ATLAS_NAMESPACE``)."""
    _, stream = _keys(topic, topic_id, namespace)
    r = client or get_redis()
    if topic != SESSION_TOPIC:
        entries = cast(
            list[tuple[str, dict[str, str]]], r.xrange(stream, _replay_start(after), "+")
        )
        return _replayed(None, entries)
    with r.pipeline(transaction=False) as pipe:
        pipe.hmget(_record_key(topic_id, namespace), *_SNAPSHOT_FIELDS)
        pipe.xrange(stream, _replay_start(after), "+")
        head, entries = pipe.execute()
    return _replayed(_running_snapshot(topic_id, head, after), entries)


#: Record fields the `running` event of a compacted replay log is rebuilt from.
_SNAPSHOT_FIELDS = ("running_event_id", "compute", "running_at_ms")


def _record_key(session_id: str, namespace: str | None) -> str:
    return keyspace(namespace).shard_of(session_id).key(C.SESSION_KEY).format(id=session_id)


def _running_snapshot(session_id: str, fields: list[str | None], after: str | None) -> Event | None:
    """The ``running`` status event of a session whose replay log was compacted when it
    started running (``finish_spawn``), rebuilt from its record with its original stream
    id; ``None`` when the log was not compacted or the reader is already past it."""
    event_id, compute, running_at = fields
    if not event_id or (after and _stream_id(event_id) <= _stream_id(after)):
        return None
    try:
        data = {"status": "running", "compute": json.loads(compute or "null")}
        ts = int(running_at or event_id.partition("-")[0]) / 1000
    except ValueError:
        return None
    return Event(session_id=session_id, type="status", data=data, ts=ts, id=event_id)


def _replayed(snapshot: Event | None, entries: list[tuple[str, dict[str, str]]]) -> list[Event]:
    events = [snapshot] if snapshot is not None else []
    return events + [e for e in (_parse_entry(i, f) for i, f in entries) if e is not None]


@wrap_redis_errors("events.subscribe")
def subscribe(
    topic_id: str,
    *,
    topic: str = "compute",
    replay: bool = True,
    after: str | None = None,
    timeout: float | None = None,
    until: tuple[str, ...] = (),
    redis_url: str | None = None,
) -> Iterator[Event]:
    """Yield past then live events of one session (or job / deploy ticket).

    Args:
        topic_id: session id (or job id / deploy ticket with ``topic``).
        topic: ``compute`` (default), ``job``, ``deploy`` or ``logs``.
        replay: first yield what the stream already recorded.
        after: resume after this stream id (a reconnecting client passes the last id seen).
        timeout: stop after this many seconds without any event (``None`` = never).
        until: stop after yielding an event whose ``type`` or ``data["status"]`` is in it,
            e.g. ``until=("terminated", "failed")``.
        redis_url: Redis to use (default ``ATLAS_REDIS_URL``).
    """
    channel, _ = _keys(topic, topic_id)
    url = redis_url or get_settings().redis_url
    r = get_redis(url)
    # on a cluster, one node's subscriber hears every PUBLISH (redis_conn)
    listener = pubsub_client_for_url(url, decode_responses=True) if is_cluster_url(url) else r
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(channel)  # subscribe *before* reading history: nothing falls between
    cursor = _Cursor(after, timeout, until)

    def candidates() -> Iterator[Event | None]:
        # The replay, then live messages (None: a read that brought none) until the idle
        # timeout; the cursor decides what is delivered and when to stop.
        if replay or after:
            yield from history(topic_id, topic=topic, client=r, after=after)
        while not cursor.timed_out():
            message = pubsub.get_message(timeout=cursor.wait_s())
            yield _parse_live(str(message["data"])) if message else None

    try:
        for event in candidates():
            if event is not None and cursor.accept(event):
                yield event
                if cursor.done:
                    return
    finally:
        pubsub.close()
        if listener is not r:
            listener.close()


@wrap_redis_errors("events.asubscribe")
async def asubscribe(
    topic_id: str,
    *,
    topic: str = "compute",
    replay: bool = True,
    after: str | None = None,
    timeout: float | None = None,
    until: tuple[str, ...] = (),
    redis_url: str | None = None,
) -> AsyncIterator[Event]:
    """asyncio twin of :func:`subscribe` (for ASGI apps, Django Channels, websockets)."""
    channel, stream = _keys(topic, topic_id)
    url = redis_url or get_settings().redis_url
    r = async_client_for_url(url, decode_responses=True)
    listener = (
        await async_pubsub_client_for_url(url, decode_responses=True) if is_cluster_url(url) else r
    )
    pubsub = listener.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(channel)
    cursor = _Cursor(after, timeout, until)

    async def candidates() -> AsyncGenerator[Event | None, None]:
        # As in subscribe: the replay, then live messages until the idle timeout.
        if replay or after:
            async with r.pipeline(transaction=False) as pipe:
                if topic == SESSION_TOPIC:
                    pipe.hmget(_record_key(topic_id, None), *_SNAPSHOT_FIELDS)
                pipe.xrange(stream, _replay_start(after), "+")
                replies = await pipe.execute()
            snapshot = (
                _running_snapshot(topic_id, replies[0], after) if topic == SESSION_TOPIC else None
            )
            for event in _replayed(snapshot, replies[-1]):
                yield event
        while not cursor.timed_out():
            message = await pubsub.get_message(timeout=cursor.wait_s())
            yield _parse_live(str(message["data"])) if message else None

    source = candidates()
    try:
        async for event in source:
            if event is not None and cursor.accept(event):
                yield event
                if cursor.done:
                    return
    finally:
        await source.aclose()
        await pubsub.aclose()
        if listener is not r:
            await listener.aclose()
        await r.aclose()


class _Cursor:
    """What both subscribe flavours track: the last stream id delivered (so a live copy of
    a replayed event is dropped), the idle timeout, and the ``until`` stop condition."""

    def __init__(self, after: str | None, timeout: float | None, until: tuple[str, ...]) -> None:
        self.last = _stream_id(after) if after else (0, 0)
        self.timeout = timeout
        self.until = until
        self.idle_since = time.monotonic()
        self.done = False

    def accept(self, event: Event) -> bool:
        """Whether to deliver ``event``; records it as delivered."""
        if event.id is not None:
            position = _stream_id(event.id)
            if position <= self.last:
                return False  # already replayed
            self.last = position
        self.idle_since = time.monotonic()
        self.done = bool(self.until) and (
            event.type in self.until or event.data.get("status") in self.until
        )
        return True

    def wait_s(self) -> float:
        """How long the next read may block (≤ 1 s, and never past the idle timeout)."""
        if self.timeout is None:
            return 1.0
        return max(0.0, min(1.0, self.timeout - (time.monotonic() - self.idle_since)))

    def timed_out(self) -> bool:
        """Whether ``timeout`` seconds passed without an event."""
        return self.timeout is not None and time.monotonic() - self.idle_since >= self.timeout


__all__ = [
    "COMPUTE_EVENT_TYPES",
    "EMIT_LUA",
    "SESSION_TOPIC",
    "Event",
    "asubscribe",
    "encode",
    "history",
    "publish",
    "session_channel_pattern",
    "subscribe",
    "topic_keys",
    "topic_keyspace",
]
