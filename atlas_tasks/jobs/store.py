"""Redis records of serverless jobs, the poller's single-flight lease, fenced commits.

Layout (templates in :mod:`atlas_tasks.constants`):

* ``atlas:job:{id}`` hash — the job record, typed as :class:`JobRecord` (its fields are
  the hash fields). Never a raw secret: a per-call API key is stored only Fernet-sealed.
* ``atlas:job-lease:{id}`` — the :class:`atlas_tasks.lease.Lease` of the poll iteration
  running right now (its value is the poller's owner token).
* the job's event stream and channel (topic ``job`` of :mod:`atlas_tasks.events`).

Redis Cluster (the tagged layout): every key above is in the ``jobs`` hash-tag group
(``atlas:{jobs}:job:<id>``...), so each script below touches one slot. Scripts and the
keys they declare (no script builds a key from ARGV):

==================  ===========================================  =====
script              KEYS                                         group
==================  ===========================================  =====
``_CREATE``         record                                       jobs
``_CLAIM``          record, lease                                jobs
``_ADVANCE``        record, lease                                jobs
``_COMMIT``         record, lease, event stream, event channel   jobs
``_REQUEST_CANCEL`` record                                       jobs
``_BEGIN_SUBMIT``   record                                       jobs
==================  ===========================================  =====

:meth:`JobStore.summaries` is a non-transactional pipeline of single-key reads.

Nothing outside this module reads a record field by name: callers get a :class:`JobRecord`
and write through the semantic methods of :class:`JobStore` (``mark_submitted``,
``set_status``, ``publish_chunks``, ``finish``...).

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
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

import redis
from pydantic import BaseModel, Field

from atlas_tasks import constants as C
from atlas_tasks.events import Event, topic_keys
from atlas_tasks.key_groups import JOBS_GROUP, fill
from atlas_tasks.keyspace_names import Keyspace, keyspace
from atlas_tasks.lease import LUA_LEASE_FUNCTIONS, Lease
from atlas_tasks.redis_lua import LUA_NOW, decode_json
from atlas_tasks.specs import JobStatus as ProviderJobStatus

if TYPE_CHECKING:
    from atlas_tasks.config import AtlasSettings


class JobStatus(StrEnum):
    """Status of an atlas job record (the provider's statuses plus ``submitting``)."""

    SUBMITTING = "submitting"
    IN_QUEUE = "in_queue"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def is_terminal(self) -> bool:
        """True once nothing changes any more (completed, failed, cancelled, timed_out)."""
        return self in TERMINAL_STATUSES

    @classmethod
    def of(cls, status: ProviderJobStatus | str) -> JobStatus:
        """The record status of a provider job status (same spelling)."""
        return cls(str(status))


#: Job statuses after which nothing changes any more.
TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.TIMED_OUT}
)


def _int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


class JobRecord(BaseModel):
    """One job's record, typed; :meth:`to_hash` / :meth:`from_hash` are its Redis form.

    Times are ms since the epoch on the Redis clock (every node shares it).
    """

    id: str
    provider: str = ""
    endpoint: str = ""
    status: JobStatus = JobStatus.SUBMITTING
    stream: bool = False
    provider_job_id: str | None = None
    created_at_ms: int | None = None
    updated_at_ms: int | None = None
    submitted_at_ms: int | None = None
    finished_at_ms: int | None = None
    deadline_ms: int | None = None
    max_duration_s: float | None = None
    poll_seq: int = 0
    polls: int = 0
    poll_errors: int = 0
    chunk_seq: int = 0
    cancel_requested: bool = False
    submit_inflight: bool = False
    output: Any = None
    error: dict[str, Any] | None = None
    #: A per-call provider key, Fernet-sealed (never the raw key); kept out of reprs.
    api_key_sealed: str | None = Field(default=None, repr=False)

    def to_hash(self) -> dict[str, str]:
        """The Redis hash form: every set field as a string (``None`` fields left out,
        booleans ``"1"``/``"0"``, ``output`` and ``error`` as JSON)."""
        out: dict[str, str] = {}
        for name, value in self.model_dump(exclude={"output", "error"}).items():
            if value is None:
                continue
            if isinstance(value, bool):
                out[name] = "1" if value else "0"
            elif isinstance(value, float):
                out[name] = f"{value:g}"
            else:
                out[name] = str(value)
        if self.status == JobStatus.COMPLETED:
            out["output"] = json.dumps(self.output, default=str)
        if self.error is not None:
            out["error"] = json.dumps(self.error, default=str)
        return out

    @classmethod
    def from_hash(cls, fields: dict[str, str]) -> JobRecord:
        """Build from the Redis hash (missing counters read as 0)."""
        error = decode_json(fields.get("error"))
        duration = fields.get("max_duration_s")
        return cls(
            id=fields.get("id", ""),
            provider=fields.get("provider", ""),
            endpoint=fields.get("endpoint", ""),
            status=JobStatus(fields.get("status") or JobStatus.SUBMITTING),
            stream=fields.get("stream") == "1",
            provider_job_id=fields.get("provider_job_id") or None,
            created_at_ms=_int(fields.get("created_at_ms")),
            updated_at_ms=_int(fields.get("updated_at_ms")),
            submitted_at_ms=_int(fields.get("submitted_at_ms")),
            finished_at_ms=_int(fields.get("finished_at_ms")),
            deadline_ms=_int(fields.get("deadline_ms")),
            max_duration_s=float(duration) if duration else None,
            poll_seq=_int(fields.get("poll_seq")) or 0,
            polls=_int(fields.get("polls")) or 0,
            poll_errors=_int(fields.get("poll_errors")) or 0,
            chunk_seq=_int(fields.get("chunk_seq")) or 0,
            cancel_requested=fields.get("cancel_requested") == "1",
            submit_inflight=fields.get("submit_inflight") == "1",
            output=decode_json(fields.get("output")),
            error=error if isinstance(error, dict) else None,
            api_key_sealed=fields.get("api_key_sealed") or None,
        )


def result_ttl_ms(settings: AtlasSettings | None = None) -> int:
    """How long a finished job's record stays readable (``ATLAS_JOB_RESULT_TTL_MS``)."""
    value = getattr(settings, "job_result_ttl_ms", None)
    return int(value) if isinstance(value, int) and value > 0 else C.DEFAULT_JOB_RESULT_TTL_MS


# --------------------------------------------------------------------------- Lua
# Redis server time in ms: the snippet every store shares (atlas_tasks.redis_lua).
_NOW = LUA_NOW

# The terminal statuses come from the enum, formatted once at import.
_TERMINAL_LUA = (
    "local function terminal(s) return "
    + " or ".join(f"s == '{s.value}'" for s in sorted(TERMINAL_STATUSES))
    + " end\n"
)

_CREATE = (
    _NOW
    + """
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
)

_CLAIM = (
    _NOW
    + _TERMINAL_LUA
    + LUA_LEASE_FUNCTIONS
    + """
-- KEYS: record, lease  ARGV: seq, owner, lease_ms
local st = redis.call('HMGET', KEYS[1], 'status', 'poll_seq', 'provider_job_id')
if not st[1] then return {'missing', now} end
if terminal(st[1]) then return {'done', now} end
if not st[3] or st[3] == '' then return {'not_ready', now} end
local cur = tonumber(st[2] or '0')
local seq = tonumber(ARGV[1])
local held = redis.call('EXISTS', KEYS[2]) == 1
if seq == cur then
  if held then return {'busy', now} end
elseif seq == cur + 1 then
  if held then return {'early', now} end
  redis.call('HSET', KEYS[1], 'poll_seq', seq)
else
  return {'stale', now}
end
lease_acquire(KEYS[2], ARGV[2], ARGV[3])
redis.call('HINCRBY', KEYS[1], 'polls', 1)
return {'ok', now}
"""
)

_ADVANCE = (
    _NOW
    + LUA_LEASE_FUNCTIONS
    + """
-- KEYS: record, lease  ARGV: owner, next_seq, poll_errors
if redis.call('GET', KEYS[2]) ~= ARGV[1] then return 'fenced' end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'poll_seq', ARGV[2], 'poll_errors', ARGV[3], 'updated_at_ms', now)
end
lease_release(KEYS[2], ARGV[1])
return 'ok'
"""
)

_COMMIT = (
    _NOW
    + LUA_LEASE_FUNCTIONS
    + """
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
if ARGV[6] == '1' then lease_release(KEYS[2], ARGV[1]) end
return out
"""
)

_REQUEST_CANCEL = (
    _TERMINAL_LUA
    + """
-- KEYS: record  ARGV: -
local st = redis.call('HMGET', KEYS[1], 'status', 'poll_seq')
if not st[1] then return {'missing', '0'} end
if terminal(st[1]) then return {st[1], st[2] or '0'} end
redis.call('HSET', KEYS[1], 'cancel_requested', '1')
return {st[1], st[2] or '0'}
"""
)

_BEGIN_SUBMIT = (
    _TERMINAL_LUA
    + """
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
)


#: Fields :meth:`JobStore.summaries` reads (``id`` and ``status`` first: both required).
_SUMMARY_FIELDS = ("id", "status", "provider", "endpoint", "created_at_ms")


def jobs_keyspace(namespace: str | None = None) -> Keyspace:
    """The keyspace of every job key (record, lease, events): one hash-tag group in the
    tagged layout (every script here touches one job's record, lease and event stream
    together; see :mod:`atlas_tasks.key_groups` for why one group for all jobs)."""
    return keyspace(namespace).group(JOBS_GROUP)


def job_key(job_id: str) -> str:
    """Redis key of a job's record."""
    return fill(jobs_keyspace(), C.JOB_KEY, id=job_id)


def job_key_pattern(namespace: str | None = None) -> str:
    """``SCAN`` pattern of every job record (dashboard, ``/metrics``)."""
    return fill(jobs_keyspace(namespace), C.JOB_KEY, id="*")


def lease_key(job_id: str) -> str:
    """Redis key of a job poller's lease."""
    return fill(jobs_keyspace(), C.JOB_LEASE_KEY, id=job_id)


def event_keys(job_id: str) -> tuple[str, str]:
    """``(channel, stream)`` of a job's events (topic ``job``)."""
    return topic_keys(job_id, "job")


def event_payload(job_id: str, type: str, data: dict[str, Any]) -> str:
    """One event in the wire format of :mod:`atlas_tasks.events` (replayable, followable)."""
    return Event(session_id=job_id, type=type, data=data).model_dump_json(exclude={"id"})


class JobStore:
    """Job records, the poller lease and fenced commits on one Redis client.

    Args:
        client: a ``decode_responses=True`` Redis client.
        result_ttl_ms: how long a finished record stays readable (see :func:`result_ttl_ms`).
    """

    def __init__(
        self, client: redis.Redis, *, result_ttl_ms: int = C.DEFAULT_JOB_RESULT_TTL_MS
    ) -> None:
        self.r = client
        self.result_ttl_ms = result_ttl_ms
        self._create = client.register_script(_CREATE)
        self._claim = client.register_script(_CLAIM)
        self._advance = client.register_script(_ADVANCE)
        self._commit = client.register_script(_COMMIT)
        self._request_cancel = client.register_script(_REQUEST_CANCEL)
        self._begin_submit = client.register_script(_BEGIN_SUBMIT)

    # ------------------------------------------------------------------ records
    def create(
        self, record: JobRecord, *, max_duration_ms: int, grace_ms: int = C.JOB_RECORD_GRACE_MS
    ) -> int:
        """Record a new job; returns Redis time (ms). The record lives until
        ``max duration + grace`` and gets the result TTL when the job ends. Redis sets
        the clock fields (``created_at_ms``, ``deadline_ms``...) and zeroes the counters.

        Raises:
            ValueError: the id is already taken.
        """
        fields = record.to_hash()
        for name in (
            "created_at_ms",
            "updated_at_ms",
            "deadline_ms",
            "poll_seq",
            "polls",
            "poll_errors",
            "chunk_seq",
        ):
            fields.pop(name, None)  # Redis owns them
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, value]
        now = int(
            cast(
                int,
                self._create(keys=[job_key(record.id)], args=[max_duration_ms, grace_ms, *flat]),
            )
        )
        if now < 0:
            raise ValueError(f"job id {record.id!r} already exists")
        return now

    def get(self, job_id: str) -> JobRecord | None:
        """The record, or ``None`` when unknown or expired."""
        fields = cast(dict[str, str], self.r.hgetall(job_key(job_id)))
        return JobRecord.from_hash(fields) if fields else None

    def summaries(self, keys: list[str]) -> list[JobRecord]:
        """Light records (id, provider, endpoint, status, created_at_ms) of the given
        record keys in one pipelined round trip, for scans (dashboard, metrics); keys
        that expired in between are left out."""
        with self.r.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, *_SUMMARY_FIELDS)
            answers = cast(list[list[str | None]], pipe.execute())
        return [
            JobRecord.from_hash(
                {k: v for k, v in zip(_SUMMARY_FIELDS, a, strict=True) if v is not None}
            )
            for a in answers
            if a[0] and a[1]
        ]

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

    def mark_submitted(self, job_id: str, provider_job_id: str, status: JobStatus) -> str:
        """Record the provider's job id and status after ``/run`` and publish ``status``
        (only while the record is still ``submitting``). Returns the commit verdict."""
        verdict, _ = self.commit(
            job_id,
            require_status=JobStatus.SUBMITTING,
            fields={"provider_job_id": provider_job_id, "status": status, "submit_inflight": "0"},
            events=[("status", {"status": status.value, "provider_job_id": provider_job_id})],
            stamp="submitted_at_ms",
        )
        return verdict

    # ------------------------------------------------------------------ single flight
    def claim(
        self, job_id: str, seq: int, owner: str, lease_ms: int = C.JOB_POLL_LEASE_MS
    ) -> tuple[str, int]:
        """Try to run poll iteration ``seq``: ``(verdict, redis now ms)``; see the module
        docstring for the verdicts (``ok busy early stale done missing not_ready``)."""
        verdict, now = cast(
            list[Any],
            self._claim(keys=[job_key(job_id), lease_key(job_id)], args=[seq, owner, lease_ms]),
        )
        return str(verdict), int(now)

    def advance(self, job_id: str, owner: str, next_seq: int, poll_errors: int = 0) -> str:
        """Move the chain on to ``next_seq`` and release the lease (``ok`` or ``fenced``)."""
        return str(
            self._advance(
                keys=[job_key(job_id), lease_key(job_id)], args=[owner, next_seq, poll_errors]
            )
        )

    def lease(self, job_id: str, owner: str) -> Lease:
        """The poll lease of a job as held (or not) by ``owner``."""
        return Lease(self.r, lease_key(job_id), C.JOB_POLL_LEASE_MS, owner=owner)

    def release(self, job_id: str, owner: str) -> bool:
        """Drop the lease if ``owner`` still holds it."""
        return self.lease(job_id, owner).release()

    # ------------------------------------------------------------------ commits
    def commit(
        self,
        job_id: str,
        *,
        owner: str | None = None,
        require_status: JobStatus | None = None,
        fields: dict[str, str] | None = None,
        events: list[tuple[str, dict[str, Any]]] | None = None,
        chunk_cursor: tuple[int, int] | None = None,
        record_ttl_ms: int | None = None,
        release: bool = False,
        stamp: str | None = None,
    ) -> tuple[str, list[str]]:
        """Update the record and publish events in one atomic, fenced step (the primitive
        under the semantic writes; ``fields`` are hash fields of :class:`JobRecord`).

        Args:
            owner: only if this poller still holds the lease.
            require_status: only if the record's status is this (writes outside the lease).
            fields: record fields to set.
            events: ``(type, data)`` events appended to the job's stream and published,
                in order.
            chunk_cursor: ``(expected, new)``: only if ``chunk_seq == expected``; sets it
                to ``new`` in the same step as publishing.
            record_ttl_ms: new TTL of the record (the result TTL when the job ends).
            release: drop the lease afterwards (only ``owner``'s).
            stamp: a record field set to Redis time (``finished_at_ms``...).

        Returns:
            ``("ok", stream ids)``, or ``("fenced" | "missing" | "conflict", [])``.
        """
        channel, stream = event_keys(job_id)
        flat: list[str] = []
        for name, value in (fields or {}).items():
            flat += [name, str(value)]
        payloads = [event_payload(job_id, t, d) for t, d in (events or [])]
        expect, new = chunk_cursor if chunk_cursor is not None else ("", "")
        args: list[Any] = [
            owner or "",
            require_status or "",
            expect,
            new,
            "" if record_ttl_ms is None else int(record_ttl_ms),
            "1" if release else "0",
            stamp or "",
            C.EVENTS_STREAM_MAXLEN,
            C.EVENTS_STREAM_TTL_MS,
            len(flat) // 2,
            *flat,
            *payloads,
        ]
        answer = cast(
            list[Any],
            self._commit(keys=[job_key(job_id), lease_key(job_id), stream, channel], args=args),
        )
        verdict = str(answer[0])
        return verdict, ([str(i) for i in answer[1:]] if verdict == "ok" else [])

    def set_status(self, job_id: str, owner: str, status: JobStatus) -> str:
        """A poller saw a new non-terminal status: record and publish it (fenced)."""
        verdict, _ = self.commit(
            job_id,
            owner=owner,
            fields={"status": status},
            events=[("status", {"status": status.value})],
        )
        return verdict

    def publish_chunks(self, job_id: str, owner: str, cursor: int, chunks: list[Any]) -> str:
        """Publish ``chunks`` as ``output`` events ``cursor+1..`` and move the chunk cursor
        in the same fenced step. Returns the commit verdict."""
        events = [
            ("output", {"seq": cursor + i + 1, "chunk": chunk}) for i, chunk in enumerate(chunks)
        ]
        verdict, _ = self.commit(
            job_id, owner=owner, events=events, chunk_cursor=(cursor, cursor + len(chunks))
        )
        return verdict

    def finish(
        self,
        job_id: str,
        status: JobStatus,
        *,
        owner: str | None = None,
        require_status: JobStatus | None = None,
        output: Any = None,
        error: dict[str, Any] | None = None,
    ) -> str:
        """Store the final result (kept for the result TTL) and publish ``status`` plus
        ``completed`` / ``failed`` / ``cancelled`` in one fenced step; a poller's lease is
        released with it. Returns the verdict (``ok``, ``fenced``, ``missing``)."""
        fields = {"status": status.value, "submit_inflight": "0"}
        final: tuple[str, dict[str, Any]]
        if status == JobStatus.COMPLETED:
            fields["output"] = json.dumps(output, default=str)
            final = ("completed", {"output": output})
        elif status == JobStatus.CANCELLED:
            final = ("cancelled", {"status": status.value})
        else:
            err = error or {"kind": "unknown", "message": f"job {status.value}"}
            fields["error"] = json.dumps(err, default=str)
            final = ("failed", {"status": status.value, "error": err})
        verdict, _ = self.commit(
            job_id,
            owner=owner,
            require_status=require_status,
            fields=fields,
            events=[("status", {"status": status.value}), final],
            record_ttl_ms=self.result_ttl_ms,
            release=owner is not None,
            stamp="finished_at_ms",
        )
        return verdict

    def request_cancel(self, job_id: str) -> tuple[str, int]:
        """Flag a cancel for the poller: ``(status, poll_seq)``; status ``missing`` if
        unknown. A finished job is left alone (its status is returned)."""
        status, seq = cast(list[Any], self._request_cancel(keys=[job_key(job_id)]))
        return str(status), int(seq)


__all__ = [
    "TERMINAL_STATUSES",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "decode_json",
    "event_keys",
    "event_payload",
    "job_key",
    "job_key_pattern",
    "jobs_keyspace",
    "lease_key",
    "result_ttl_ms",
]
