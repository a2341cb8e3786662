"""Redis records of serverless jobs, the poller's single-flight lease, fenced commits.

Layout (templates in :mod:`atlas_tasks.constants`):

* ``atlas:job:{id}`` hash — the job record (see :data:`RECORD_FIELDS`). Never a raw
  secret: a per-call API key is stored only Fernet-sealed.
* ``atlas:job-lease:{id}`` — the lease of the poll iteration running right now.
* the job's event stream and channel (topic ``job`` of :mod:`atlas_tasks.events`).

Single flight. Each poll message carries a sequence number; the record holds
``poll_seq``, the sequence of the live poll chain. :meth:`JobStore.claim` is one Lua call:

* ``seq == poll_seq`` and no lease → take the lease (``ok``); lease held → ``busy``
  (a duplicate of the running iteration, or the redelivery of a crashed one: retry later).
* ``seq == poll_seq + 1`` → the successor a poller scheduled before advancing: ``early``
  while that poller still holds the lease; if the lease is gone the poller died between
  scheduling and advancing, so the successor adopts the chain (``ok``).
* anything else → ``stale`` (a duplicate of an iteration already done): exit.

A poller schedules its successor *before* :meth:`JobStore.advance` moves ``poll_seq``
on and releases the lease, so a crash at any point leaves a message that can continue
the chain (acks-late redelivery or the successor), and duplicates die as ``stale``.

Exactly-once events. Every write of an iteration — status change, stream chunks, final
result — goes through :meth:`JobStore.commit`, one Lua script that checks the lease
owner (and, for chunks, the chunk cursor), appends the events to the job's stream,
PUBLISHes them and updates the record in the same atomic step. A crash is therefore
either before the commit (nothing published, cursor unchanged) or after it (everything
published, cursor advanced): chunks are never published twice nor skipped by atlas.
The one window atlas cannot close is the provider's: RunPod's ``/stream`` hands each
chunk out once, so a worker killed between receiving a ``/stream`` answer and the commit
loses that answer's chunks (the ``completed`` event still carries the whole output).
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from atlas_tasks import constants as C
from atlas_tasks.events import Event

#: Job statuses after which nothing changes any more.
TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "timed_out"})

#: Fields of the record hash (all strings in Redis).
RECORD_FIELDS = (
    "id", "provider", "endpoint", "stream", "status", "provider_job_id",
    "created_at_ms", "updated_at_ms", "submitted_at_ms", "finished_at_ms", "deadline_ms",
    "max_duration_s", "poll_seq", "polls", "poll_errors", "chunk_seq", "cancel_requested",
    "submit_inflight", "output", "error", "api_key_sealed",
)

_NOW = (
    "local _t = redis.call('TIME') "
    "local now = tonumber(_t[1]) * 1000 + math.floor(tonumber(_t[2]) / 1000)\n"
)

_TERMINAL_LUA = (
    "local function terminal(s) return s == 'completed' or s == 'failed' "
    "or s == 'cancelled' or s == 'timed_out' end\n"
)

_CREATE = _NOW + """
-- KEYS: record  ARGV: max_duration_ms, grace_ms, field/value...
if redis.call('EXISTS', KEYS[1]) == 1 then return -1 end
local max = tonumber(ARGV[1])
local kv = {'created_at_ms', now, 'updated_at_ms', now, 'deadline_ms', now + max,
            'poll_seq', 0, 'polls', 0, 'poll_errors', 0, 'chunk_seq', 0}
for i = 3, #ARGV do kv[#kv + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(kv))
redis.call('PEXPIRE', KEYS[1], max + tonumber(ARGV[2]))
return now
"""

_CLAIM = _NOW + _TERMINAL_LUA + """
-- KEYS: record, lease  ARGV: seq, owner, lease_ms
local st = redis.call('HMGET', KEYS[1], 'status', 'poll_seq', 'provider_job_id')
if not st[1] then return {'missing', now} end
if terminal(st[1]) then return {'done', now} end
if not st[3] or st[3] == '' then return {'not_ready', now} end
local cur = tonumber(st[2] or '0')
local seq = tonumber(ARGV[1])
local holder = redis.call('GET', KEYS[2])
if seq == cur then
  if holder then return {'busy', now} end
elseif seq == cur + 1 then
  if holder then return {'early', now} end
  redis.call('HSET', KEYS[1], 'poll_seq', seq)
else
  return {'stale', now}
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', tonumber(ARGV[3]))
redis.call('HINCRBY', KEYS[1], 'polls', 1)
return {'ok', now}
"""

_ADVANCE = _NOW + """
-- KEYS: record, lease  ARGV: owner, next_seq, poll_errors
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'fenced' end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'poll_seq', ARGV[2], 'poll_errors', ARGV[3], 'updated_at_ms', now)
end
redis.call('DEL', KEYS[2])
return 'ok'
"""

_RELEASE = """
-- KEYS: lease  ARGV: owner
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_COMMIT = _NOW + """
-- KEYS: record, lease, event stream, event channel
-- ARGV: owner, require_status, expect_chunk_seq, new_chunk_seq, record_ttl_ms, release,
--       stamp_field, maxlen, stream_ttl_ms, nfields, field/value * nfields, payload...
if redis.call('EXISTS', KEYS[1]) == 0 then return {'missing'} end
if ARGV[1] ~= '' and redis.call('GET', KEYS[2]) ~= ARGV[1] then return {'fenced'} end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], 'status') ~= ARGV[2] then
  return {'fenced'}
end
local kv = {'updated_at_ms', now}
if ARGV[3] ~= '' then
  local cur = redis.call('HGET', KEYS[1], 'chunk_seq') or '0'
  if cur ~= ARGV[3] then return {'conflict', cur} end
  kv[#kv + 1] = 'chunk_seq'
  kv[#kv + 1] = ARGV[4]
end
local nfields = tonumber(ARGV[10])
for i = 11, 10 + 2 * nfields do kv[#kv + 1] = ARGV[i] end
if ARGV[7] ~= '' then
  kv[#kv + 1] = ARGV[7]
  kv[#kv + 1] = now
end
redis.call('HSET', KEYS[1], unpack(kv))
local out = {'ok'}
local first = 11 + 2 * nfields
for i = first, #ARGV do
  local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', tonumber(ARGV[8]), '*', 'e', ARGV[i])
  redis.call('PUBLISH', KEYS[4], id .. '|' .. ARGV[i])
  out[#out + 1] = id
end
if #ARGV >= first then redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[9])) end
if ARGV[5] ~= '' then redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[5])) end
if ARGV[6] == '1' then redis.call('DEL', KEYS[2]) end
return out
"""

_REQUEST_CANCEL = _TERMINAL_LUA + """
-- KEYS: record  ARGV: -
local st = redis.call('HMGET', KEYS[1], 'status', 'poll_seq')
if not st[1] then return {'missing', '0'} end
if terminal(st[1]) then return {st[1], st[2] or '0'} end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return {st[1], st[2] or '0'}
"""

_BEGIN_SUBMIT = _TERMINAL_LUA + """
-- KEYS: record  ARGV: -
local st = redis.call('HMGET', KEYS[1], 'status', 'provider_job_id', 'submit_inflight',
                      'cancel_requested')
if not st[1] then return 'missing' end
if terminal(st[1]) then return 'done' end
if st[2] and st[2] ~= '' then return 'submitted' end
if st[4] == '1' then return 'cancel_requested' end
if st[3] == '1' then return 'interrupted' end
redis.call('HSET', KEYS[1], 'submit_inflight', '1')
return 'ok'
"""


def job_key(job_id: str) -> str:
    """Redis key of a job's record."""
    return C.JOB_KEY.format(id=job_id)


def lease_key(job_id: str) -> str:
    """Redis key of a job poller's lease."""
    return C.JOB_LEASE_KEY.format(id=job_id)


def event_keys(job_id: str) -> tuple[str, str]:
    """``(channel, stream)`` of a job's events (topic ``job``)."""
    channel, stream = C.EVENT_TOPICS["job"]
    return channel.format(id=job_id), stream.format(id=job_id)


def event_payload(job_id: str, type: str, data: dict[str, Any]) -> str:
    """One event in the wire format of :mod:`atlas_tasks.events` (replayable, followable)."""
    return Event(session_id=job_id, type=type, data=data).model_dump_json(exclude={"id"})


class JobStore:
    """Job records, the poller lease and fenced commits on one Redis client.

    Args:
        client: a ``decode_responses=True`` Redis client.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.r = client
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._advance = client.register_script(_ADVANCE)
        self._release = client.register_script(_RELEASE)
        self._commit = client.register_script(_COMMIT)
        self._request_cancel = client.register_script(_REQUEST_CANCEL)
        self._begin_submit = client.register_script(_BEGIN_SUBMIT)

    # ------------------------------------------------------------------ records
    def create(self, job_id: str, fields: dict[str, str], *, max_duration_ms: int,
               grace_ms: int = C.JOB_RECORD_GRACE_MS) -> int:
        """Record a new job; returns Redis time (ms). The record lives until
        ``max duration + grace`` and gets the result TTL when the job ends.

        Raises:
            ValueError: the id is already taken.
        """
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        now = int(cast(int, self._create(keys=[job_key(job_id)],
                                         args=[max_duration_ms, grace_ms, *flat])))
        if now < 0:
            raise ValueError(f"job id {job_id!r} already exists")
        return now

    def get(self, job_id: str) -> dict[str, str]:
        """The record (empty dict when unknown or expired)."""
        return cast(dict[str, str], self.r.hgetall(job_key(job_id)))

    def now_ms(self) -> int:
        """Redis server time in ms (the clock every web node and worker shares)."""
        seconds, micros = self.r.time()
        return int(seconds) * 1000 + int(micros) // 1000

    # ------------------------------------------------------------------ submission
    def begin_submit(self, job_id: str) -> str:
        """Mark a submission in flight (write-ahead) before calling the provider.

        Returns ``ok``; or why not to submit: ``missing``, ``done``, ``submitted`` (a
        redelivery after success), ``cancel_requested``, ``interrupted`` (an earlier
        attempt died mid-call; resubmitting could run the job twice).
        """
        return str(self._begin_submit(keys=[job_key(job_id)]))

    def submit_refused(self, job_id: str) -> None:
        """The provider certainly did not take the job (429, connect failure): a retry may
        submit again."""
        self.r.hdel(job_key(job_id), "submit_inflight")

    # ------------------------------------------------------------------ single flight
    def claim(self, job_id: str, seq: int, owner: str, lease_ms: int = C.JOB_POLL_LEASE_MS
              ) -> tuple[str, int]:
        """Try to run poll iteration ``seq``: ``(verdict, redis now ms)``; see the module
        docstring for the verdicts (``ok busy early stale done missing not_ready``)."""
        verdict, now = cast(list[Any], self._claim(keys=[job_key(job_id), lease_key(job_id)],
                                                   args=[seq, owner, lease_ms]))
        return str(verdict), int(now)

    def advance(self, job_id: str, owner: str, next_seq: int, poll_errors: int = 0) -> str:
        """Move the chain on to ``next_seq`` and release the lease (``ok`` or ``fenced``)."""
        return str(self._advance(keys=[job_key(job_id), lease_key(job_id)],
                                 args=[owner, next_seq, poll_errors]))

    def release(self, job_id: str, owner: str) -> bool:
        """Drop the lease if ``owner`` still holds it."""
        return bool(self._release(keys=[lease_key(job_id)], args=[owner]))

    # ------------------------------------------------------------------ commits
    def commit(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        require_status: str | None = None,
        fields: dict[str, str] | None = None,
        events: list[tuple[str, dict[str, Any]]] | None = None,
        chunk_cursor: tuple[int, int] | None = None,
        record_ttl_ms: int | None = None,
        release: bool = False,
        stamp: str | None = None,
    ) -> tuple[str, list[str]]:
        """Update the record and publish events in one atomic, fenced step.

        Args:
            owner: only if this poller still holds the lease.
            require_status: only if the record's status is this (writes outside the lease).
            fields: record fields to set.
            events: ``(type, data)`` events appended to the job's stream and published,
                in order.
            chunk_cursor: ``(expected, new)``: only if ``chunk_seq == expected``; sets it
                to ``new`` in the same step as publishing.
            record_ttl_ms: new TTL of the record (the result TTL when the job ends).
            release: drop the lease afterwards.
            stamp: a record field set to Redis time (``finished_at_ms``...).

        Returns:
            ``("ok", stream ids)``, or ``("fenced" | "missing" | "conflict", [])``.
        """
        channel, stream = event_keys(job_id)
        flat: list[str] = []
        for name, value in (fields or {}).items():
            flat += [name, value]
        payloads = [event_payload(job_id, t, d) for t, d in (events or [])]
        expect, new = chunk_cursor if chunk_cursor is not None else ("", "")
        args: list[Any] = [
            owner or "", require_status or "", expect, new,
            "" if record_ttl_ms is None else int(record_ttl_ms), "1" if release else "0",
            stamp or "", C.EVENTS_STREAM_MAXLEN, C.EVENTS_STREAM_TTL_MS, len(flat) // 2,
            *flat, *payloads,
        ]
        answer = cast(list[Any], self._commit(
            keys=[job_key(job_id), lease_key(job_id), stream, channel], args=args))
        verdict = str(answer[0])
        return verdict, ([str(i) for i in answer[1:]] if verdict == "ok" else [])

    def request_cancel(self, job_id: str) -> tuple[str, int]:
        """Flag a cancel for the poller: ``(status, poll_seq)``; status ``missing`` if
        unknown. A finished job is left alone (its status is returned)."""
        status, seq = cast(list[Any], self._request_cancel(keys=[job_key(job_id)]))
        return str(status), int(seq)


def decode_json(value: str | None) -> Any:
    """A JSON record field (``None`` when absent or unreadable)."""
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


__all__ = ["RECORD_FIELDS", "TERMINAL_STATUSES", "JobStore", "decode_json", "event_keys",
           "event_payload", "job_key", "lease_key"]
