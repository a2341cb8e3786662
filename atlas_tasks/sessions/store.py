"""The session store in Redis: records, the idle clock, deadlines, intents, fences.

Layout (templates in :mod:`atlas_tasks.constants`; ``atlas:`` is the namespace, see
:mod:`atlas_tasks.keyspace_names`, and a store keeps its namespace's names in :class:`Names`):

* ``atlas:session:{id}`` hash — the session record. Never holds a raw secret: the bearer
  token is kept as its SHA-256 hash, a per-call API key only Fernet-sealed.
* ``atlas:alive:{id}`` — a plain key whose PX *is* the idle clock; touch() re-arms it.
* ``atlas:deadlines`` zset — session id scored by idle deadline (ms), swept by the reaper.
* ``atlas:intents`` zset — write-ahead spawn intents scored by their own deadline.
* ``atlas:cleanups`` zset — cleanup obligations of ended sessions (a pod may exist under
  the session's name), scored by the time of their next attempt (exponential backoff).
* ``atlas:fence:{id}`` — terminate fence so duplicate terminates make one provider DELETE.
* ``atlas:stops`` zset — durable stops (``stop_tracked``) scored by when the reaper
  re-sends their terminate if it made no progress.
* ``atlas:epoch`` — written once per Redis dataset; its absence tells the reaper that Redis
  lost its data (see :mod:`atlas_tasks.sessions.reaper`).

Every multi-key transition is one Lua script, so it is atomic and one round trip, and
every time comes from Redis ``TIME`` so web nodes and workers share one clock. Status
strings in the scripts come from :class:`~atlas_tasks.sessions.records.SessionStatus`
(``$RUNNING``... substituted once, at import); the spawn lease and the terminate fences
are :mod:`atlas_tasks.lease` leases (owner token; renewed and released only by the owner).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar, cast

import redis
import redis.asyncio as aioredis
from pydantic import BaseModel, Field

from atlas_tasks import constants as C
from atlas_tasks.errors import NotTracked
from atlas_tasks.events import EMIT_LUA, encode
from atlas_tasks.keyspace_names import Keyspace, keyspace
from atlas_tasks.lease import LUA_LEASE_FUNCTIONS, Lease
from atlas_tasks.quotas.store import (
    LUA_QUOTA_RELEASE,
    QuotaStore,
    reservation_key,
    reservations_index_key,
    usage_key_halves,
)
from atlas_tasks.redis_lua import LUA_NOW, flat_hash
from atlas_tasks.sessions.cost import accrued_usd
from atlas_tasks.sessions.records import (
    IDLE_REASON,
    MAX_LIFETIME_REASON,
    SessionRecord,
    SessionStatus,
    lua_with_statuses,
)
from atlas_tasks.specs import Port

# Hard lifetime (max_lifetime_ms): the record holds `expires_at_ms` (creation + lifetime)
# and, until the `expiring` event went out, `expiry_warn_at_ms`. Every script that scores
# the deadline index caps the idle deadline with lifetime_cap, so the one index and the one
# sweep that end idle sessions also warn and end expired ones (_CLAIM_DUE tells them
# apart). touch()'s fast path writes no index entry, so it stays one key and one command.
_LUA_LIFETIME_CAP = """
local function lifetime_cap(due, expires, warn)
  local cap = nil
  if warn then cap = tonumber(warn) elseif expires then cap = tonumber(expires) end
  if cap and cap < due then return cap end
  return due
end
"""

_CREATE = lua_with_statuses(
    LUA_NOW
    + """
-- KEYS: session, sessions set, intents, GPU-idle watch index
-- ARGV: id, intent_ttl_ms, record_ttl_ms, expiry_warning_ms, field/value...
redis.call('HSET', KEYS[1], 'created_at_ms', now, 'last_activity_ms', now)
for i = 5, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
local life = tonumber(redis.call('HGET', KEYS[1], 'max_lifetime_ms') or '0')
if life and life > 0 then
  -- the hard deadline counts from creation, on Redis's clock like every other deadline
  redis.call('HSET', KEYS[1], 'expires_at_ms', now + life)
  local warning = tonumber(ARGV[4])
  if warning > 0 then
    redis.call('HSET', KEYS[1], 'expiry_warn_at_ms', math.max(now, now + life - warning))
  end
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[2]), ARGV[1])
-- opted in to GPU-idle reaping: indexed in this same step, so the watch (without a
-- deployment-wide policy) reads only the index and never misses a session
if redis.call('HEXISTS', KEYS[1], 'gpu_idle_below_pct') == 1
    or redis.call('HEXISTS', KEYS[1], 'gpu_idle_window_ms') == 1 then
  redis.call('SADD', KEYS[4], ARGV[1])
end
return now
"""
)

_TOUCH = lua_with_statuses(
    LUA_NOW
    + _LUA_LIFETIME_CAP
    + """
-- KEYS: session, alive, deadlines, channel  ARGV: id, record_grace_ms, publish(0/1)
local st = redis.call('HMGET', KEYS[1], 'idle_ttl_ms', 'status', 'expires_at_ms',
                      'expiry_warn_at_ms')
if not st[1] then return -1 end
if st[2] ~= $RUNNING and st[2] ~= $SPAWNING then return -2 end
local ttl = tonumber(st[1])
redis.call('HSET', KEYS[1], 'last_activity_ms', now)
if st[2] == $RUNNING then
  redis.call('SET', KEYS[2], ttl, 'PX', ttl)
  redis.call('ZADD', KEYS[3], lifetime_cap(now + ttl, st[3], st[4]), ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[2]))
end
if ARGV[3] == '1' then
  redis.call('PUBLISH', KEYS[4], '-|' .. cjson.encode({session_id = ARGV[1], type = 'heartbeat',
    data = {last_activity_ms = now}, ts = now / 1000}))
end
return now
"""
)

# The hot path of touch(): one key, no index write. The alive key's value is the idle TTL,
# so re-arming it needs nothing else. The deadline index is left behind on purpose: the
# reaper's claim follows the live clock when a stale entry comes due (see _CLAIM_DUE), so
# a continuously touched session costs the sweep one PTTL per idle TTL, not per touch.
_TOUCH_FAST = """
local ttl = redis.call('GET', KEYS[1])
if not ttl then return -1 end
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
"""

_FINISH_SPAWN = lua_with_statuses(
    LUA_NOW
    + EMIT_LUA
    + _LUA_LIFETIME_CAP
    + """
-- KEYS: session, alive, deadlines, intents, event stream, event channel, cost meter index
-- ARGV: id, compute_id, compute_json, grace_ms, running event payload
-- The `running` event is published in the same step: a worker dying right after this
-- script cannot leave a running session whose subscribers never hear of it. The session
-- enters the cost meter's index here too (watermark = running_at_ms), so even a session
-- that ends before the next meter run is charged, once.
local st = redis.call('HMGET', KEYS[1], 'status', 'idle_ttl_ms', 'compute_id',
                      'expires_at_ms', 'expiry_warn_at_ms')
if not st[1] then redis.call('ZREM', KEYS[4], ARGV[1]) return 'missing' end
-- a re-sent spawn that raced a slow original: the first pod recorded wins
if st[3] and st[3] ~= '' and st[3] ~= ARGV[2] then return 'duplicate' end
redis.call('ZREM', KEYS[4], ARGV[1])
-- Rewrite the record afresh without its in-flight spawn payload (its TTL kept): a hash
-- that ever held the ~600-byte sealed payload stays a hashtable for good, while a new one
-- whose values fit `hash-max-listpack-value` is a listpack, about half the memory.
local pttl = redis.call('PTTL', KEYS[1])
local all = redis.call('HGETALL', KEYS[1])
local fields = {'compute_id', ARGV[2], 'compute', ARGV[3]}
for i = 1, #all, 2 do
  local name = all[i]
  if name ~= 'spawn_sealed' and name ~= 'compute_id' and name ~= 'compute'
      and name ~= 'create_unsettled' then
    fields[#fields + 1] = name
    fields[#fields + 1] = all[i + 1]
  end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(fields))
if st[1] ~= $SPAWNING then
  if pttl > 0 then redis.call('PEXPIRE', KEYS[1], pttl) end  -- the running path sets its own
  -- stopped while spawning: due at once, so the reaper finishes it if the caller dies
  if st[1] == $TERMINATING then redis.call('ZADD', KEYS[3], now, ARGV[1]) end
  return st[1]
end
local ttl = tonumber(st[2])
redis.call('HSET', KEYS[1], 'status', $RUNNING, 'running_at_ms', now, 'last_activity_ms', now)
redis.call('SET', KEYS[2], ttl, 'PX', ttl)
redis.call('ZADD', KEYS[3], lifetime_cap(now + ttl, st[4], st[5]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[4]))
redis.call('ZADD', KEYS[7], 'NX', now, ARGV[1])
-- Compact the replay log once running: the `running` event goes out live with its stream
-- id, the record keeps that id (its payload is the record's compute), and the stream is
-- emptied but kept (its last id keeps later ids increasing). events.history rebuilds the
-- event from the record, so replay still starts at `running`; the spawn's progress
-- events before it are dropped. Saves ~1.1 KB per running session (bench memory).
local running_id = emit(KEYS[5], KEYS[6], ARGV[5])
redis.call('XTRIM', KEYS[5], 'MAXLEN', 0)
redis.call('HSET', KEYS[1], 'running_event_id', running_id)
return $RUNNING
"""
)

_FAIL_SPAWN = lua_with_statuses(
    LUA_NOW
    + EMIT_LUA
    + LUA_QUOTA_RELEASE
    + """
-- KEYS: session, intents, sessions, deadlines, alive, cleanups, event stream, event channel,
--       quota reservation, quota reservations index
-- ARGV: id, error_json, ttl_ms, failed event payload, cleanup_due_in_ms ('' = no cleanup),
--       quota usage key prefix, quota usage key suffix
-- Ends the session visibly in one step: status, error and the `failed` event together. A
-- pod that may exist under its name becomes a separate cleanup obligation (cleanups zset,
-- the record kept until it is settled), never a reason to stay `spawning`. A session that
-- already ended keeps its status and first error (a duplicate failure is a no-op).
-- The quota reservation is given back in this same step, whatever the record says: after
-- this script the session is ended (or gone), and a release is idempotent.
-- (tagged layout: no quota keys here, they live in another slot; the store releases
-- right after this script, and release_orphaned is the backstop)
if KEYS[9] then quota_release(KEYS[9], KEYS[10], ARGV[1], ARGV[6], ARGV[7]) end
local st = redis.call('HGET', KEYS[1], 'status')
if st == $FAILED or st == $TERMINATED then return 0 end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[5])
if not st then return 0 end
redis.call('HDEL', KEYS[1], 'spawn_sealed')
redis.call('HSET', KEYS[1], 'status', $FAILED, 'error', ARGV[2], 'ended_at_ms', now)
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[1], 'cleanup_pending', '1')
  redis.call('ZADD', KEYS[6], now + tonumber(ARGV[5]), ARGV[1])
end
if redis.call('HGET', KEYS[1], 'cleanup_pending') == '1' then
  redis.call('PERSIST', KEYS[1])  -- the obligation needs provider, key and pod name
else
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
end
emit(KEYS[7], KEYS[8], ARGV[4])
return 1
"""
)

_BEGIN_TERMINATE = lua_with_statuses(
    LUA_NOW
    + EMIT_LUA
    + LUA_LEASE_FUNCTIONS
    + """
-- KEYS: session, alive, deadlines, fence, event stream, event channel
-- ARGV: id, reason, fence_token, fence_ttl_ms, slack_ms, terminating event payload
-- Returns {verdict, compute_id, first, provider, base_url, api_key_sealed, pod_name}: the
-- record fields the worker needs ride along, and the first transition publishes its
-- `terminating` event here, so a terminate costs two round trips around the provider call.
local st = redis.call('HMGET', KEYS[1], 'status', 'compute_id', 'provider', 'base_url',
                      'api_key_sealed', 'pod_name')
local function answer(verdict, first)
  return {verdict, st[2] or '', first, st[3] or '', st[4] or '', st[5] or '', st[6] or ''}
end
if not st[1] then return answer('missing', '0') end
if st[1] == $TERMINATED or st[1] == $FAILED then return answer(st[1], '0') end
if ARGV[2] == 'idle_timeout' and redis.call('EXISTS', KEYS[2]) == 1 then
  return answer('alive', '0')
end
-- the fence is a lease: taken, or renewed by the same holder (a redelivered terminate)
if lease_acquire(KEYS[4], ARGV[3], ARGV[4]) == 0
    and lease_renew(KEYS[4], ARGV[3], ARGV[4]) == 0 then
  return answer('fenced', '0')
end
local first = '0'
if st[1] ~= $TERMINATING then
  first = '1'
  redis.call('HSET', KEYS[1], 'status', $TERMINATING, 'reason', ARGV[2], 'terminating_at_ms', now)
  emit(KEYS[5], KEYS[6], ARGV[6])
end
redis.call('DEL', KEYS[2])
-- Stay in the deadline index, due again after the slack: if this terminate dies with its
-- worker, the reaper picks the session up again instead of leaking the pod.
if redis.call('ZSCORE', KEYS[3], ARGV[1]) or st[1] ~= $SPAWNING then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[5]), ARGV[1])
end
return answer('ok', first)
"""
)

_FINISH_TERMINATE = lua_with_statuses(
    LUA_NOW
    + EMIT_LUA
    + LUA_QUOTA_RELEASE
    + """
-- KEYS: session, deadlines, sessions, alive, fence, intents, event stream, event channel,
--       quota reservation, quota reservations index
-- ARGV: id, record_ttl_ms, terminated event payload, quota usage key prefix, suffix
-- The session's quota reservation is released in the same step that ends it (idle,
-- stop, max lifetime, podless stop, stale intent, adopted pod): no worker death between
-- "terminated" and "released" can leak it; a second release finds nothing.
-- (tagged layout: released by the store right after this script, see _FAIL_SPAWN)
if KEYS[9] then quota_release(KEYS[9], KEYS[10], ARGV[1], ARGV[4], ARGV[5]) end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[4], KEYS[5])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[1], 'spawn_sealed')
redis.call('HSET', KEYS[1], 'status', $TERMINATED, 'ended_at_ms', now)
-- a pending cleanup obligation keeps the record (provider, key, pod name) alive
if redis.call('HGET', KEYS[1], 'cleanup_pending') ~= '1' then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
emit(KEYS[7], KEYS[8], ARGV[3])
return 1
"""
)

_TERMINATE_FAILED = (
    LUA_NOW
    + """
-- KEYS: session, deadlines, fence  ARGV: id, error_json, retry_in_ms
redis.call('DEL', KEYS[3])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'last_error', ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
return 1
"""
)

_SETTLE_PODLESS_TERMINATE = (
    LUA_LEASE_FUNCTIONS
    + """
-- KEYS: session, intents, fence  ARGV: id, fence_token
-- A terminate that found no pod yet decides, atomically with _FINISH_SPAWN, who ends it:
-- the spawn recorded a pod meanwhile -> 'pod' (this fence holder terminates it, since
-- that spawn's own terminate was fenced out); the spawn is still in flight -> 'deferred'
-- (the fence is handed over, the spawn terminates its pod when it comes up); neither ->
-- 'none' (nothing was ever created: finish).
local compute_id = redis.call('HGET', KEYS[1], 'compute_id')
if compute_id and compute_id ~= '' then return {'pod', compute_id} end
if redis.call('ZSCORE', KEYS[2], ARGV[1]) then
  lease_release(KEYS[3], ARGV[2])
  return {'deferred', ''}
end
return {'none', ''}
"""
)

_CLAIM_DUE = (
    LUA_NOW
    + EMIT_LUA
    + """
-- KEYS: deadlines
-- ARGV: limit, slack_ms, alive key prefix, record key prefix, grace_ms, event stream
--       prefix, event channel prefix, idle reason, max lifetime reason
-- Returns {id, reason, ...} of the sessions claimed for a terminate.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(due) do
  local rec = ARGV[4] .. id
  local life = redis.call('HMGET', rec, 'expires_at_ms', 'expiry_warn_at_ms')
  local expires = tonumber(life[1] or '')
  local pttl = redis.call('PTTL', ARGV[3] .. id)
  if expires and expires <= now then
    -- past its hard lifetime: ended however recently it was touched
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, ARGV[9])
  elseif pttl > 0 then
    -- touched since this entry was written (touch does not write the index): follow the
    -- live clock, and keep the record outliving it
    local warn = tonumber(life[2] or '')
    if warn and warn <= now then
      -- the `expiring` warning, once (the field goes with it)
      redis.call('HDEL', rec, 'expiry_warn_at_ms')
      emit(ARGV[6] .. id, ARGV[7] .. id, cjson.encode({session_id = id, type = 'expiring',
           data = {in_ms = expires - now, expires_at_ms = expires}, ts = now / 1000}))
      warn = nil
    end
    local next_due = now + pttl
    if warn and warn < next_due then next_due = warn end
    if expires and expires < next_due then next_due = expires end
    redis.call('ZADD', KEYS[1], next_due, id)
    redis.call('PEXPIRE', rec, pttl + tonumber(ARGV[5]))
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    table.insert(out, id)
    table.insert(out, ARGV[8])
  end
end
return out
"""
)

_CLAIM_EXPIRED = (
    LUA_NOW
    + """
-- KEYS: deadlines, alive  ARGV: id, slack_ms
-- The keyspace listener's claim: the same one claim_due takes (deadline moved past now),
-- so an expiry seen by both the listener and the sweep is terminated once.
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if not score or tonumber(score) > now then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

_START_SPAWN = lua_with_statuses(
    LUA_NOW
    + LUA_LEASE_FUNCTIONS
    + """
-- KEYS: lease, intents, session  ARGV: id, token, lease_ms, intent_ttl_ms
-- One spawn attempt at a time per session: a re-sent spawn (new task id) waits for the
-- lease of a slow original; the same execution asking again renews its own lease.
-- Only a `spawning` session can start an attempt (-2 otherwise): a stop, a failure or a
-- finished spawn claimed it, and a redelivered message must never create for it.
local st = redis.call('HGET', KEYS[3], 'status')
if st ~= $SPAWNING then return -2 end
if lease_acquire(KEYS[1], ARGV[2], ARGV[3]) == 0
    and lease_renew(KEYS[1], ARGV[2], ARGV[3]) == 0 then
  return -1
end
redis.call('ZADD', KEYS[2], 'XX', now + tonumber(ARGV[4]), ARGV[1])
return redis.call('HINCRBY', KEYS[3], 'spawn_attempts', 1)
"""
)

_BEGIN_CREATE = lua_with_statuses(
    LUA_NOW
    + """
-- KEYS: session, lease, intents  ARGV: id, token, intent_ttl_ms
-- The last check before a create request leaves: the session is still `spawning` and this
-- attempt still holds its lease. It counts the create and marks it unsettled (a pod may
-- exist by name from now on) until the create's outcome is known: recorded by
-- finish_spawn, or cleared by settle_create after a definite "nothing was created".
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st ~= $SPAWNING then return st end
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return 'lease_lost' end
redis.call('HINCRBY', KEYS[1], 'create_attempts', 1)
redis.call('HSET', KEYS[1], 'create_unsettled', '1')
redis.call('ZADD', KEYS[3], 'XX', now + tonumber(ARGV[3]), ARGV[1])
return 'ok'
"""
)

_ADD_CLEANUP = (
    LUA_NOW
    + """
-- KEYS: session, cleanups  ARGV: id, due_in_ms
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'cleanup_pending', '1')
redis.call('PERSIST', KEYS[1])
redis.call('ZADD', KEYS[2], 'NX', now + tonumber(ARGV[2]), ARGV[1])
return 1
"""
)

_CLAIM_CLEANUPS = (
    LUA_NOW
    + """
-- KEYS: cleanups  ARGV: limit, record key prefix, base_ms, cap_ms
-- Due cleanup obligations, each re-scored to its next attempt before it is worked on
-- (base * 2^(attempt - 1), capped): a worker that dies mid-cleanup leaves it due again
-- later, and a cleanup that keeps failing is tried ever less often, never once a sweep.
-- Returns {id, attempt, next_in_ms, ...}.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(due) do
  local rec = ARGV[2] .. id
  if redis.call('HGET', rec, 'cleanup_pending') ~= '1' then
    redis.call('ZREM', KEYS[1], id)  -- settled, or the record is gone
  else
    local attempt = redis.call('HINCRBY', rec, 'cleanup_attempts', 1)
    local delay = tonumber(ARGV[3]) * math.pow(2, math.min(attempt - 1, 30))
    delay = math.min(delay, tonumber(ARGV[4]))
    redis.call('ZADD', KEYS[1], now + delay, id)
    table.insert(out, id)
    table.insert(out, attempt)
    table.insert(out, delay)
  end
end
return out
"""
)

_FINISH_CLEANUP = lua_with_statuses(
    LUA_NOW
    + EMIT_LUA
    + """
-- KEYS: session, cleanups, event stream, event channel
-- ARGV: id, record_ttl_ms, cleanup event payload
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'cleanup_pending') ~= '1' then return 0 end
redis.call('HDEL', KEYS[1], 'cleanup_pending', 'cleanup_error')
redis.call('HSET', KEYS[1], 'cleanup_done_at_ms', now)
local st = redis.call('HGET', KEYS[1], 'status')
if st == $FAILED or st == $TERMINATED then
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]))
end
emit(KEYS[3], KEYS[4], ARGV[3])
return 1
"""
)

_CLAIM_STALLED = lua_with_statuses(
    LUA_NOW
    + """
-- KEYS: intents  ARGV: limit, intent_ttl_ms, stall_ms, record key prefix, max_resends
-- Intents not refreshed for stall_ms (their spawn message was lost: kombu can drop one
-- when a worker dies between BRPOP and its unacked bookkeeping). Each is re-scored as if
-- it made progress and returned with its sealed payload for a re-send; past the cap it is
-- made stale at once, so the stale-intent path resolves it.
local upper = now + tonumber(ARGV[2]) - tonumber(ARGV[3])
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, upper, 'LIMIT', 0,
                       tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(ids) do
  local rec = ARGV[4] .. id
  local st = redis.call('HMGET', rec, 'status', 'spawn_sealed', 'compute_id')
  -- a session stopped before its pod existed waits for its spawn to end it (the stop
  -- deferred to it): a lost spawn message must be re-sent for it too
  local podless_stop = st[1] == $TERMINATING and (not st[3] or st[3] == '')
  if (st[1] == $SPAWNING or podless_stop) and st[2] then
    if redis.call('HINCRBY', rec, 'spawn_resends', 1) <= tonumber(ARGV[5]) then
      redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
      table.insert(out, id)
      table.insert(out, st[2])
    else
      redis.call('ZADD', KEYS[1], now, id)
    end
  end
end
return out
"""
)

_CLAIM_INTENTS = (
    LUA_NOW
    + """
-- KEYS: intents  ARGV: limit
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(due) do redis.call('ZREM', KEYS[1], id) end
return due
"""
)


#: Cleanup obligations: session id → time (ms) of the next attempt. Kept next to the
#: intents (not inside them) so a backlog of failing cleanups never crowds the stalled-spawn
#: scan of the intents; :meth:`SessionStore.intent_ids` covers both for the orphan scan.
CLEANUPS_KEY = "atlas:cleanups"
#: Backoff of a failing cleanup: first retry after this, doubling per attempt...
CLEANUP_BACKOFF_BASE_MS = 2_000
#: ...up to this (a bad API key is retried every 10 minutes, not every sweep).
CLEANUP_BACKOFF_CAP_MS = 10 * 60 * 1000
#: Durable stops: session id scored by the time (ms) the reaper re-sends its terminate.
STOPS_KEY = "atlas:stops"
#: Written (SET NX, value = creation time in ms) once per Redis dataset. Missing while
#: Redis answers means Redis lost its data (restart without persistence, FLUSHALL).
EPOCH_KEY = "atlas:epoch"
#: The registry's key layout as first written (``untagged`` or ``tagged:<shards>``): a
#: process configured for another layout would not find the live sessions' records.
LAYOUT_KEY = "atlas:layout"

_REQUEST_STOP = lua_with_statuses(
    LUA_NOW
    + """
-- KEYS: session, sessions set, stops  ARGV: id, reason, resend_after_ms
-- Recorded before the terminate is enqueued, so a lost broker message is re-sent by the
-- reaper. Answers the session's state: 'ok' (recorded), $TERMINATED/$FAILED (nothing
-- to stop), 'missing' (unknown or no longer tracked).
local st = redis.call('HGET', KEYS[1], 'status')
if not st then return 'missing' end
if st == $TERMINATED or st == $FAILED then return st end
if redis.call('SISMEMBER', KEYS[2], ARGV[1]) == 0 then return 'missing' end
-- the first request's time is kept: it measures how long the stop has been pending
redis.call('HSETNX', KEYS[1], 'stop_requested_at_ms', now)
redis.call('HSET', KEYS[1], 'stop_reason', ARGV[2])
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
return 'ok'
"""
)

_CLAIM_STOPS = lua_with_statuses(
    LUA_NOW
    + """
-- KEYS: stops, sessions set  ARGV: limit, resend_after_ms, record key prefix, fence prefix
-- Stops due for a re-send. Entries of sessions that ended (or vanished) are dropped here:
-- finish_terminate does not know this index. A stop whose terminate holds the fence is
-- making progress: it is re-scored without a re-send.
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local out = {}
for _, id in ipairs(due) do
  local st = redis.call('HGET', ARGV[3] .. id, 'status')
  if not st or st == $TERMINATED or st == $FAILED
      or redis.call('SISMEMBER', KEYS[2], id) == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), id)
    if redis.call('EXISTS', ARGV[4] .. id) == 0 then
      redis.call('HINCRBY', ARGV[3] .. id, 'stop_resends', 1)
      table.insert(out, id)
    end
  end
end
return out
"""
)

_ADOPT = lua_with_statuses(
    LUA_NOW
    + """
-- KEYS: session, alive, deadlines, sessions set
-- ARGV: id, provider, pod_name, compute_id, compute_json, idle_ttl_ms, record_grace_ms
-- After a data loss: a minimal `running` record for a live pod named like a session, with
-- a fresh idle clock, so the pod is kept while its user touches it and idle-reaped if
-- nobody does. Never overwrites an existing record.
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[6])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'provider', ARGV[2], 'status', $RUNNING,
           'pod_name', ARGV[3], 'compute_id', ARGV[4], 'compute', ARGV[5],
           'idle_ttl_ms', ttl, 'auth', 'unknown', 'user_id', 'null', 'adopted', '1',
           'created_at_ms', now, 'running_at_ms', now, 'last_activity_ms', now)
redis.call('PEXPIRE', KEYS[1], ttl + tonumber(ARGV[7]))
redis.call('SET', KEYS[2], ttl, 'PX', ttl)
redis.call('ZADD', KEYS[3], now + ttl, ARGV[1])
redis.call('SADD', KEYS[4], ARGV[1])
return 1
"""
)

#: Per-user index: session ids of one user scored by creation time (ms); the user is
#: the JSON form of the ``user_id`` given to spawn. Written by :meth:`SessionStore.create`
#: in the same MULTI as the record; entries whose record expired are pruned when read.
USER_SESSIONS_KEY = "atlas:user-sessions:{user}"
#: The newest entries a user index keeps (older ones are trimmed at create).
USER_INDEX_MAX = 1000

#: ``COUNT`` of the ``SSCAN``/``ZSCAN`` calls that read whole indexes, and the batch size
#: of their iterators: ~1000 members cost Redis well under a millisecond per call.
SCAN_BATCH = 1000

_INDEX_USER = (
    LUA_NOW
    + """
-- KEYS: user index  ARGV: id, max entries
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -tonumber(ARGV[2]) - 1)
return now
"""
)

_INFO = """
-- KEYS: session, alive
-- The record, its idle clock and the time, read together on the record's node (one round
-- trip, and the clock the idle clock runs on; a cluster pipeline refuses TIME).
local t = redis.call('TIME')
return {redis.call('HGETALL', KEYS[1]), redis.call('PTTL', KEYS[2]), t[1], t[2]}
"""

_LIST_USER = """
-- KEYS: user index  ARGV: record key prefix, offset, limit
-- One page of a user's sessions, newest first, with their records; ids whose record
-- expired are dropped from the index here (lazy pruning).
local ids = redis.call('ZREVRANGE', KEYS[1], tonumber(ARGV[2]),
                       tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local rec = redis.call('HGETALL', ARGV[1] .. id)
  if #rec == 0 then
    redis.call('ZREM', KEYS[1], id)
  else
    table.insert(out, rec)
  end
end
return out
"""

_TOUCH_FAST_SHA = hashlib.sha1(_TOUCH_FAST.encode()).hexdigest()

_T = TypeVar("_T")

#: Threads a process uses to sweep registry shards at once (tagged layout).
SWEEP_THREADS = 8
_sweep_pool: tuple[int, ThreadPoolExecutor] | None = None
_sweep_pool_lock = threading.Lock()


def sweep_pool() -> ThreadPoolExecutor:
    """The process's pool for per-shard sweep calls, made on first use in each process
    (a pool inherited through fork has no threads, so a forked worker makes its own)."""
    global _sweep_pool
    pid = os.getpid()
    pool = _sweep_pool
    if pool is None or pool[0] != pid:
        with _sweep_pool_lock:
            pool = _sweep_pool
            if pool is None or pool[0] != pid:
                pool = (pid, ThreadPoolExecutor(SWEEP_THREADS, thread_name_prefix="atlas-sweep"))
                _sweep_pool = pool
    return pool[1]


class Names:
    """The session store's key names in one namespace, computed once per store (the
    per-session ones as prefixes: ``prefix + id`` is the hot path's whole cost).

    In the tagged layout (Redis Cluster) there is one :class:`Names` per registry shard,
    built from the shard's keyspace: its indexes and the keys of its sessions share the
    shard's hash tag, so every script below touches one slot. The quota names are the
    quota group's (used only in the untagged layout, where end scripts release inline).
    """

    def __init__(self, ks: Keyspace) -> None:
        self.ks = ks
        self.deadlines = ks.key(C.DEADLINE_INDEX_KEY)
        self.sessions = ks.key(C.SESSIONS_SET_KEY)
        self.intents = ks.key(C.INTENTS_KEY)
        self.cleanups = ks.key(CLEANUPS_KEY)
        self.stops = ks.key(STOPS_KEY)
        self.epoch = ks.key(EPOCH_KEY)
        self.record_prefix = ks.key(C.SESSION_KEY).format(id="")
        self.alive_prefix = ks.key(C.SESSION_ALIVE_KEY).format(id="")
        self.fence_prefix = ks.key(C.TERMINATE_FENCE_KEY).format(id="")
        self.meter_index = ks.key(C.METER_INDEX_KEY)
        self.gpu_watch = ks.key(C.GPU_WATCH_INDEX_KEY)
        self.stream_prefix = ks.key(C.EVENTS_STREAM_KEY).format(id="")
        self.channel_prefix = ks.key(C.EVENTS_CHANNEL).format(id="")
        self.reservations = reservations_index_key(ks.namespace)
        self.usage_halves = usage_key_halves(ks.namespace)


class IndexCounts(NamedTuple):
    """What :meth:`SessionStore.index_counts` answers."""

    intents: int
    stops: int
    due: int


class TerminateStart(NamedTuple):
    """What :meth:`SessionStore.begin_terminate` answers."""

    verdict: str
    compute_id: str
    first: bool
    #: The fields needed to reach the provider (provider, base_url, api_key_sealed,
    #: pod_name); the rest of the record is not read.
    record: SessionRecord


class SessionInfo(BaseModel):
    """What :func:`atlas_tasks.client.info` returns about a tracked session."""

    id: str
    provider: str
    status: str
    compute_id: str | None = None
    pod_name: str | None = None
    user_id: Any = None
    idle_ttl_ms: int
    created_at_ms: int | None = None
    last_activity_ms: int | None = None
    ports: list[Port] = Field(default_factory=list)
    public_ip: str | None = None
    auth: str = "none"
    reason: str | None = None
    error: dict[str, Any] | None = None
    #: The caller's tenant (quotas and budgets count per user and per tenant).
    tenant_id: str | None = None
    #: Hard deadline (ms, Redis time) set by ``max_lifetime_ms``; ``None``: none.
    expires_at_ms: int | None = None
    #: USD accrued so far: the pod's cost per hour × its running time (Redis time), see
    #: :mod:`atlas_tasks.sessions.cost`. ``None`` when the price is unknown.
    accrued_usd: float | None = None

    @classmethod
    def from_record(cls, record: SessionRecord, now_ms: int | None = None) -> SessionInfo:
        """The caller's view of a record; ``now_ms`` (Redis time) dates ``accrued_usd``
        of a live session (``None`` then, without it)."""
        compute = record.compute or {}
        return cls(
            id=record.id,
            provider=record.provider,
            status=str(record.status) if record.status else "unknown",
            compute_id=record.compute_id or None,
            pod_name=record.pod_name,
            user_id=record.user_id,
            idle_ttl_ms=record.idle_ttl_ms,
            created_at_ms=record.created_at_ms,
            last_activity_ms=record.last_activity_ms,
            ports=[Port(**p) for p in compute.get("ports", [])],
            public_ip=compute.get("public_ip"),
            auth=record.auth,
            reason=record.reason,
            error=record.error,
            tenant_id=record.tenant_id,
            expires_at_ms=record.expires_at_ms,
            accrued_usd=accrued_usd(record, now_ms),
        )


@dataclass(frozen=True)
class Keys:
    """The concrete Redis keys of one session (in ``ks``, else the settings' namespace;
    in the tagged layout, in the session's registry shard)."""

    session_id: str
    ks: Keyspace | None = None

    def _name(self, template: str) -> str:
        ks = (self.ks or keyspace()).shard_of(self.session_id)
        return ks.key(template).format(id=self.session_id)

    @property
    def record(self) -> str:
        """The session record hash."""
        return self._name(C.SESSION_KEY)

    @property
    def alive(self) -> str:
        """The key whose expiry is the idle clock."""
        return self._name(C.SESSION_ALIVE_KEY)

    @property
    def fence(self) -> str:
        """The terminate fence (one holder talks to the provider)."""
        return self._name(C.TERMINATE_FENCE_KEY)

    @property
    def spawn_lease(self) -> str:
        """The spawn lease (one spawn attempt at a time)."""
        return self._name(C.SPAWN_LEASE_KEY)

    @property
    def channel(self) -> str:
        """The session's pub/sub channel."""
        return self._name(C.EVENTS_CHANNEL)


def _touch_args(
    session_id: str, publish_heartbeats: bool, names: Names
) -> tuple[list[str], list[Any]]:
    # The hot path: the store's precomputed prefixes, not a Keys object per call.
    return (
        [
            names.record_prefix + session_id,
            names.alive_prefix + session_id,
            names.deadlines,
            names.channel_prefix + session_id,
        ],
        [session_id, C.SESSION_RECORD_GRACE_MS, "1" if publish_heartbeats else "0"],
    )


def _touch_verdict(session_id: str, result: int) -> None:
    if result == -1:
        raise NotTracked(f"session {session_id!r} is not tracked")
    if result == -2:
        raise NotTracked(f"session {session_id!r} is terminating or terminated")


def _shard_names(ks: Keyspace, shards: list[Names], session_id: str) -> Names:
    # the hot path's lookup (touch): no hashing in the untagged layout
    return shards[ks.shard_index(session_id)] if ks.tagged else shards[0]


def _split_page(
    ids: list[str], records: list[SessionRecord | None]
) -> tuple[list[str], list[SessionRecord]]:
    """The tagged layout's page of a user's sessions, read by id across shards:
    ``(ids whose record expired, to prune from the index as _LIST_USER does, records)``."""
    gone = [sid for sid, rec in zip(ids, records, strict=True) if rec is None]
    return gone, [rec for rec in records if rec is not None and rec.id]


def _records_of_rows(rows: list[Any]) -> list[SessionRecord]:
    out: list[SessionRecord] = []
    for flat in rows:
        record = SessionRecord.from_hash(flat_hash(flat))
        if record is not None and record.id:
            out.append(record)
    return out


class SessionStore:
    """All session state transitions, each one Redis round trip.

    Args:
        client: a ``decode_responses=True`` Redis client.
        publish_heartbeats: publish a ``heartbeat`` event on every touch (pub/sub only;
            ``ATLAS_HEARTBEAT_EVENTS``). Off by default: it takes touch off its fast path.
        namespace: the deployment's namespace (default: ``ATLAS_NAMESPACE`` now); every
            key this store reads or writes is in it.
    """

    def __init__(
        self, client: redis.Redis, *, publish_heartbeats: bool = False, namespace: str | None = None
    ) -> None:
        self.r = client
        self.publish_heartbeats = publish_heartbeats
        self.ks = keyspace(namespace)
        #: The names of each registry shard (one in the untagged layout).
        self.shards = [Names(shard) for shard in self.ks.all_shards()]
        #: The first shard's names: the store's only names in the untagged layout.
        self.n = self.shards[0]
        self._tagged = self.ks.tagged
        self._quota_store: QuotaStore | None = None
        self._create = client.register_script(_CREATE)
        self._touch = client.register_script(_TOUCH)
        self._claim_expired = client.register_script(_CLAIM_EXPIRED)
        self._finish_spawn = client.register_script(_FINISH_SPAWN)
        self._fail_spawn = client.register_script(_FAIL_SPAWN)
        self._begin_terminate = client.register_script(_BEGIN_TERMINATE)
        self._finish_terminate = client.register_script(_FINISH_TERMINATE)
        self._terminate_failed = client.register_script(_TERMINATE_FAILED)
        self._settle_podless = client.register_script(_SETTLE_PODLESS_TERMINATE)
        self._claim_due = client.register_script(_CLAIM_DUE)
        self._claim_intents = client.register_script(_CLAIM_INTENTS)
        self._start_spawn = client.register_script(_START_SPAWN)
        self._claim_stalled = client.register_script(_CLAIM_STALLED)
        self._begin_create = client.register_script(_BEGIN_CREATE)
        self._add_cleanup = client.register_script(_ADD_CLEANUP)
        self._claim_cleanups = client.register_script(_CLAIM_CLEANUPS)
        self._finish_cleanup = client.register_script(_FINISH_CLEANUP)
        self._request_stop = client.register_script(_REQUEST_STOP)
        self._claim_stops = client.register_script(_CLAIM_STOPS)
        self._adopt = client.register_script(_ADOPT)
        self._index_user = client.register_script(_INDEX_USER)
        self._list_user = client.register_script(_LIST_USER)
        self._info = client.register_script(_INFO)

    def keys(self, session_id: str) -> Keys:
        """The keys of one session in this store's namespace."""
        return Keys(session_id, self.ks)

    def names_of(self, session_id: str) -> Names:
        """The names of ``session_id``'s registry shard (the store's names when untagged)."""
        return _shard_names(self.ks, self.shards, session_id)

    def _each_shard(self, fn: Callable[[Names], _T]) -> list[_T]:
        # One call per registry shard: inline when there is one, else on the sweep pool
        # so a sweep's round trips to a cluster's masters overlap instead of queueing.
        if len(self.shards) == 1:
            return [fn(self.shards[0])]
        return list(sweep_pool().map(fn, self.shards))

    def _release_quota_after_end(self, session_id: str) -> None:
        # Tagged layout only: the quota's keys live in their own slot, so the end
        # scripts cannot release in their step. Released right after; a worker dying in
        # between leaves it to QuotaStore.release_orphaned (which asks live_ids()).
        if not self._tagged:
            return
        if self._quota_store is None:
            self._quota_store = QuotaStore(self.r, namespace=self.ks.namespace)
        self._quota_store.release(session_id)

    # ------------------------------------------------------------------ caller side
    def create(self, record: SessionRecord, *, expiry_warning_ms: int = 0) -> int:
        """Record a new session (its ``status`` is ``spawning``) with a write-ahead intent,
        and index it under its user, if any.

        A record with ``max_lifetime_ms`` gets its hard deadline (``expires_at_ms``, from
        Redis time) and, with ``expiry_warning_ms > 0``, the time of its ``expiring``
        event, written by the same script.

        Returns the Redis time (ms) of creation.
        """
        session_id = record.id
        fields = record.to_hash()
        flat: list[str] = []
        for key, value in fields.items():
            flat += [key, value]
        record_ttl = C.SPAWN_INTENT_TTL_MS + C.SESSION_RECORD_GRACE_MS
        n = self.names_of(session_id)
        keys = [n.record_prefix + session_id, n.sessions, n.intents, n.gpu_watch]
        args: list[str | int] = [
            session_id,
            C.SPAWN_INTENT_TTL_MS,
            record_ttl,
            max(0, int(expiry_warning_ms)),
            *flat,
        ]
        if record.user_id is None:
            return int(self._create(keys=keys, args=args))
        if self._tagged:
            # The user's index is in its own slot: indexed first, so a listed id whose
            # create then failed is pruned on read, and a created session is always
            # listed.
            self._index_user(
                keys=[user_index_key(canonical_user(record.user_id), self.ks)],
                args=[session_id, USER_INDEX_MAX],
            )
            return int(self._create(keys=keys, args=args))
        # The record and its per-user index entry in one MULTI: one round trip, and a
        # listed session always has a record (until it expires; then reads prune it).
        with self.r.pipeline(transaction=True) as pipe:
            self._create(keys=keys, args=args, client=pipe)
            self._index_user(
                keys=[user_index_key(canonical_user(record.user_id), self.ks)],
                args=[session_id, USER_INDEX_MAX],
                client=pipe,
            )
            created, _ = pipe.execute()
        return int(created)

    def list_user_records(
        self, user_json: str, *, offset: int = 0, limit: int = 100
    ) -> list[SessionRecord]:
        """Records of one user's sessions, newest first (one round trip per page).

        Args:
            user_json: the canonical JSON form of the user id (:func:`canonical_user`).
            offset, limit: the page.
        """
        index = user_index_key(user_json, self.ks)
        if self._tagged:
            ids = cast(list[str], self.r.zrevrange(index, offset, offset + limit - 1))
            gone, page = _split_page(ids, self.get_many(ids))
            if gone:
                self.r.zrem(index, *gone)
            return page
        return _records_of_rows(
            self._list_user(keys=[index], args=[self.n.record_prefix, offset, limit])
        )

    def touch(self, session_id: str) -> None:
        """Re-arm the idle clock: one round trip on a running session.

        The fast path re-arms ``atlas:alive:{id}`` alone (raw ``EVALSHA`` on one key); a
        session without that key (spawning, terminating, unknown) or with heartbeat events
        on takes the full script, which also records activity and answers ``NotTracked``.

        Raises:
            NotTracked: unknown, terminated or terminating session.
        """
        n = self.names_of(session_id)
        if not self.publish_heartbeats:
            alive = n.alive_prefix + session_id
            try:
                fast = self.r.evalsha(_TOUCH_FAST_SHA, 1, alive)
            except redis.exceptions.NoScriptError:  # Redis restarted or SCRIPT FLUSH
                self.r.script_load(_TOUCH_FAST)
                fast = self.r.evalsha(_TOUCH_FAST_SHA, 1, alive)
            if fast == 1:
                return
        keys, args = _touch_args(session_id, self.publish_heartbeats, n)
        _touch_verdict(session_id, int(self._touch(keys=keys, args=args)))

    def get(self, session_id: str) -> SessionRecord | None:
        """The session's record, or ``None`` when unknown (or expired)."""
        return SessionRecord.from_hash(self.get_hash(session_id))

    def get_hash(self, session_id: str) -> dict[str, str]:
        """The raw record hash (empty when unknown): for diagnostics and layout tests."""
        return cast(dict[str, str], self.r.hgetall(self.keys(session_id).record))

    def get_many(self, session_ids: list[str]) -> list[SessionRecord | None]:
        """The records of ``session_ids`` (one pipelined round trip), in order."""
        with self.r.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.hgetall(self.keys(sid).record)
            rows = cast(list[dict[str, str]], pipe.execute())
        return [SessionRecord.from_hash(row) for row in rows]

    def get_fields(self, session_ids: list[str], *names: str) -> list[SessionRecord | None]:
        """Partial records holding only the fields ``names`` (one pipelined ``HMGET``
        each, cheaper than whole records for scans); ``None`` where none of them is set
        (the record is gone).

        ``names`` are :class:`SessionRecord` attribute names (the hash's field names).
        """
        known = SessionRecord.__dataclass_fields__
        for name in names:
            if name not in known:
                raise ValueError(f"not a SessionRecord field: {name!r}")
        with self.r.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.hmget(self.keys(sid).record, list(names))
            rows = cast(list[list[str | None]], pipe.execute()) if session_ids else []
        out: list[SessionRecord | None] = []
        for sid, values in zip(session_ids, rows, strict=True):
            present = {k: v for k, v in zip(names, values, strict=True) if v is not None}
            out.append(SessionRecord.from_hash({"id": sid, **present}) if present else None)
        return out

    def info(self, session_id: str) -> SessionInfo:
        """The record as a :class:`SessionInfo`.

        Raises:
            NotTracked: no such session (or its record expired).
        """
        k = self.keys(session_id)
        flat, pttl, secs, micros = self._info(keys=[k.record, k.alive])
        return info_from_reads(session_id, flat_hash(flat), int(pttl), (int(secs), int(micros)))

    def list_ids(self) -> list[str]:
        """Ids of every session currently tracked (spawning, running or terminating),
        sorted.

        Read with ``SSCAN`` in batches of :data:`SCAN_BATCH`, never one ``SMEMBERS``: at
        100k sessions that one command blocks Redis for tens of ms, and every touch waits
        behind it. Callers that can work batch by batch should use :meth:`iter_ids`.
        """
        members = self._each_shard(lambda n: self._scan_set(n.sessions, SCAN_BATCH))
        return sorted(set().union(*members))

    def iter_ids(self, batch: int = SCAN_BATCH) -> Iterator[list[str]]:
        """The tracked session ids, in batches of about ``batch`` as ``SSCAN`` returns
        them, shard after shard (each id once per pass; no order). An id tracked for the
        whole pass is yielded; one added or removed meanwhile may or may not be."""
        for n in self.shards:
            yield from _batched(self._sscan(n.sessions, batch), batch)

    def iter_meter_ids(self, batch: int = SCAN_BATCH) -> Iterator[list[str]]:
        """The ids in the cost meter's index (``ZSCAN``, scores dropped), in batches of
        about ``batch``, shard after shard; each id once per pass (as :meth:`iter_ids`)."""
        for n in self.shards:
            yield from _batched(self._zscan(n.meter_index, batch), batch)

    def iter_gpu_watch_ids(self, batch: int = SCAN_BATCH) -> Iterator[list[str]]:
        """The ids in the GPU-idle watch index (sessions that opted in at spawn, indexed
        by :meth:`create`; ended ones stay until the watcher prunes them from
        :attr:`Names.gpu_watch`), in batches as :meth:`iter_ids`."""
        for n in self.shards:
            yield from _batched(self._sscan(n.gpu_watch, batch), batch)

    def _scan_set(self, key: str, count: int) -> set[str]:
        return set(self._sscan(key, count))

    def _sscan(self, key: str, count: int) -> Iterator[str]:
        # SSCAN may return an element twice (a rehash mid-scan): deduplicated per pass.
        seen: set[str] = set()
        cursor: int = 0
        while True:
            cursor, members = cast(
                tuple[int, list[str]], self.r.sscan(key, cursor=cursor, count=count)
            )
            for member in members:
                if member not in seen:
                    seen.add(member)
                    yield str(member)
            if int(cursor) == 0:
                return

    def _zscan(self, key: str, count: int) -> Iterator[str]:
        seen: set[str] = set()
        cursor: int = 0
        while True:
            cursor, pairs = cast(
                tuple[int, list[tuple[str, float]]], self.r.zscan(key, cursor=cursor, count=count)
            )
            for member, _score in pairs:
                if member not in seen:
                    seen.add(member)
                    yield str(member)
            if int(cursor) == 0:
                return

    def count_failing_terminates(self, session_ids: list[str]) -> int:
        """How many of ``session_ids`` are terminating with a failed attempt recorded (the
        reaper retries them): one pipelined read of two fields each."""
        with self.r.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.hmget(self.keys(sid).record, "status", "last_error")
            rows = cast(list[list[str | None]], pipe.execute())
        return sum(
            1 for status, last_error in rows if status == SessionStatus.TERMINATING and last_error
        )

    def is_tracked(self, session_id: str) -> bool:
        """Whether the session is in the tracked set."""
        return bool(self.r.sismember(self.names_of(session_id).sessions, session_id))

    def index_counts(self, now_ms: int) -> IndexCounts:
        """Sizes of the registry's indexes over every shard (one pipelined read): spawn
        intents, recorded stops, and deadlines due by ``now_ms``."""
        with self.r.pipeline(transaction=False) as pipe:
            for n in self.shards:
                pipe.zcard(n.intents)
                pipe.zcard(n.stops)
                pipe.zcount(n.deadlines, "-inf", now_ms)
            flat = [int(x) for x in pipe.execute()]
        return IndexCounts(sum(flat[0::3]), sum(flat[1::3]), sum(flat[2::3]))

    def tracked_flags(self, session_ids: list[str]) -> list[bool]:
        """Whether each of ``session_ids`` is tracked (one pipelined read)."""
        with self.r.pipeline(transaction=False) as pipe:
            for sid in session_ids:
                pipe.sismember(self.names_of(sid).sessions, sid)
            return [bool(x) for x in pipe.execute()] if session_ids else []

    def live_ids(self, session_ids: list[str]) -> set[str]:
        """Those of ``session_ids`` whose record exists and has not ended (spawning,
        running or terminating): what a quota reservation may still be held for."""
        records = self.get_fields(session_ids, "status")
        return {
            sid
            for sid, rec in zip(session_ids, records, strict=True)
            if rec is not None
            and rec.status not in (SessionStatus.TERMINATED, SessionStatus.FAILED)
        }

    # ------------------------------------------------------------------ worker side
    def start_spawn(self, session_id: str, token: str, lease_ms: int) -> int:
        """Take the session's spawn lease and count the attempt (refreshes the intent).

        Returns the attempt number, -1 when another spawn of this session holds the
        lease, or -2 when the session is no longer ``spawning`` (nothing may be created).
        """
        k = self.keys(session_id)
        return int(
            self._start_spawn(
                keys=[k.spawn_lease, self.names_of(session_id).intents, k.record],
                args=[session_id, token, lease_ms, C.SPAWN_INTENT_TTL_MS],
            )
        )

    def begin_create(self, session_id: str, token: str) -> str:
        """Atomically check, right before a create request, that it may be sent.

        Returns ``ok`` (counted in ``create_attempts``, marked ``create_unsettled``), or
        why not: the session's status (``terminating``, ``failed``...), ``missing`` or
        ``lease_lost`` (another attempt took over).
        """
        k = self.keys(session_id)
        return str(
            self._begin_create(
                keys=[k.record, k.spawn_lease, self.names_of(session_id).intents],
                args=[session_id, token, C.SPAWN_INTENT_TTL_MS],
            )
        )

    def settle_create(self, session_id: str) -> None:
        """The last create definitely made nothing (4xx, 429, refused connection)."""
        self.r.hdel(self.keys(session_id).record, "create_unsettled")

    def spawn_lease(self, session_id: str, token: str, ttl_ms: int) -> Lease:
        """The session's spawn lease as held by ``token`` (taken by :meth:`start_spawn`);
        its :meth:`~atlas_tasks.lease.Lease.keep_alive` renews it while the attempt runs."""
        return Lease(self.r, self.keys(session_id).spawn_lease, ttl_ms, owner=token)

    def spawn_lease_holder(self, session_id: str) -> str | None:
        """The token holding the session's spawn lease, if any."""
        return cast("str | None", self.r.get(self.keys(session_id).spawn_lease))

    def release_spawn_lease(self, session_id: str, token: str | None = None) -> None:
        """Let the next spawn attempt of this session start at once; with ``token``, only
        if that execution still holds the lease (never a successor's). Without a token
        (the session ended: no attempt may go on) the lease is dropped whoever holds it."""
        if token is None:
            self.r.delete(self.keys(session_id).spawn_lease)
        else:
            Lease(self.r, self.keys(session_id).spawn_lease, 1, owner=token).release()

    def claim_stalled_spawns(
        self, stall_ms: int, max_resends: int, limit: int = 100
    ) -> list[tuple[str, str]]:
        """``(session id, sealed spawn payload)`` of spawns that made no progress for
        ``stall_ms``, claimed for a re-send (see ``_CLAIM_STALLED``)."""

        def claim(n: Names) -> list[Any]:
            return cast(
                list[Any],
                self._claim_stalled(
                    keys=[n.intents],
                    args=[limit, C.SPAWN_INTENT_TTL_MS, stall_ms, n.record_prefix, max_resends],
                ),
            )

        flat = [str(x) for part in self._each_shard(claim) for x in part]
        return list(zip(flat[::2], flat[1::2], strict=True))

    def finish_spawn(self, session_id: str, compute_id: str, compute: dict[str, Any]) -> str:
        """Record the created pod, start the idle clock and publish ``running`` (one step).

        Returns the status the session had: ``running`` on the normal path,
        ``terminating`` when a stop arrived during the spawn (the caller then terminates),
        ``missing`` when the record vanished.
        """
        n = self.names_of(session_id)
        return str(
            self._finish_spawn(
                keys=[
                    n.record_prefix + session_id,
                    n.alive_prefix + session_id,
                    n.deadlines,
                    n.intents,
                    n.stream_prefix + session_id,
                    n.channel_prefix + session_id,
                    n.meter_index,
                ],
                args=[
                    session_id,
                    compute_id,
                    json.dumps(compute),
                    C.SESSION_RECORD_GRACE_MS,
                    encode(
                        session_id,
                        "status",
                        {"status": SessionStatus.RUNNING.value, "compute": compute},
                    ),
                ],
            )
        )

    def fail_spawn(
        self, session_id: str, error: dict[str, Any], cleanup_due_in_ms: int | None = None
    ) -> bool:
        """Mark a spawn as failed, stop tracking it, release its quota reservation and
        publish ``failed`` (one step).

        ``cleanup_due_in_ms`` registers a cleanup obligation (a pod may exist by name)
        due after that long. A session that already ended is left as it is (its first
        error stands). Returns whether this call ended the session.
        """
        n = self.names_of(session_id)
        ended = bool(
            self._fail_spawn(
                keys=[
                    n.record_prefix + session_id,
                    n.intents,
                    n.sessions,
                    n.deadlines,
                    n.alive_prefix + session_id,
                    n.cleanups,
                    n.stream_prefix + session_id,
                    n.channel_prefix + session_id,
                    *self._quota_keys(session_id),
                ],
                args=[
                    session_id,
                    json.dumps(error),
                    C.TERMINATED_RECORD_TTL_MS,
                    encode(
                        session_id, "status", {"status": SessionStatus.FAILED.value, "error": error}
                    ),
                    "" if cleanup_due_in_ms is None else cleanup_due_in_ms,
                    *n.usage_halves,
                ],
            )
        )
        self._release_quota_after_end(session_id)
        return ended

    def _quota_keys(self, session_id: str) -> list[str]:
        # The end scripts' quota KEYS: the reservation and its index in the untagged
        # layout; none in the tagged one (another slot; see _release_quota_after_end).
        if self._tagged:
            return []
        return [reservation_key(session_id, self.ks.namespace), self.n.reservations]

    # ------------------------------------------------------------------ cleanups
    def add_cleanup(self, session_id: str, due_in_ms: int = 0) -> bool:
        """Register a cleanup obligation for the session's pod name (kept if present)."""
        return bool(
            self._add_cleanup(
                keys=[self.keys(session_id).record, self.names_of(session_id).cleanups],
                args=[session_id, due_in_ms],
            )
        )

    def claim_cleanups(
        self,
        limit: int,
        base_ms: int = CLEANUP_BACKOFF_BASE_MS,
        cap_ms: int = CLEANUP_BACKOFF_CAP_MS,
    ) -> list[tuple[str, int, int]]:
        """Due cleanups as ``(session id, attempt, ms until the next attempt)``; each is
        re-scored to its next attempt by this claim (exponential backoff, capped)."""

        def claim(n: Names) -> list[Any]:
            return cast(
                list[Any],
                self._claim_cleanups(
                    keys=[n.cleanups], args=[limit, n.record_prefix, base_ms, cap_ms]
                ),
            )

        flat = [str(x) for part in self._each_shard(claim) for x in part]
        return [
            (flat[i], int(flat[i + 1]), int(float(flat[i + 2]))) for i in range(0, len(flat), 3)
        ]

    def finish_cleanup(self, session_id: str, data: dict[str, Any]) -> bool:
        """Settle a cleanup obligation and publish its ``cleanup`` event (``data``)."""
        n = self.names_of(session_id)
        return bool(
            self._finish_cleanup(
                keys=[
                    n.record_prefix + session_id,
                    n.cleanups,
                    n.stream_prefix + session_id,
                    n.channel_prefix + session_id,
                ],
                args=[session_id, C.TERMINATED_RECORD_TTL_MS, encode(session_id, "cleanup", data)],
            )
        )

    def cleanup_failed(self, session_id: str, error: dict[str, Any]) -> None:
        """Record the last error of a cleanup attempt (the session's error is kept)."""
        self.r.hset(self.keys(session_id).record, "cleanup_error", json.dumps(error))

    def cleanup_ids(self) -> dict[str, float]:
        """Pending cleanup obligations: session id → next attempt time (ms)."""
        parts = self._each_shard(
            lambda n: cast(
                list[tuple[str, float]], self.r.zrange(n.cleanups, 0, -1, withscores=True)
            )
        )
        return {str(k): float(v) for part in parts for k, v in part}

    def begin_terminate(
        self, session_id: str, reason: str, fence_token: str, slack_ms: int
    ) -> TerminateStart:
        """Take the termination fence (and publish ``terminating`` on the first one).

        ``verdict`` is ``ok`` (go ahead), ``alive`` (idle reason but touched: do nothing),
        ``fenced`` (another terminate owns it), ``terminated``/``failed`` (nothing to do)
        or ``missing``; ``first`` is True when this call moved the session into
        ``terminating``; ``record`` carries the fields needed to reach the provider.
        """
        k = self.keys(session_id)
        n = self.names_of(session_id)
        verdict, compute_id, first, provider, base_url, sealed, pod_name = self._begin_terminate(
            keys=[
                k.record,
                k.alive,
                n.deadlines,
                k.fence,
                n.stream_prefix + session_id,
                n.channel_prefix + session_id,
            ],
            args=[
                session_id,
                reason,
                fence_token,
                C.TERMINATE_FENCE_TTL_MS,
                slack_ms,
                encode(session_id, "terminating", {"reason": reason}),
            ],
        )
        record = SessionRecord(
            id=session_id,
            provider=str(provider),
            base_url=str(base_url) or None,
            api_key_sealed=str(sealed) or None,
            pod_name=str(pod_name),
        )
        return TerminateStart(str(verdict), str(compute_id), first == "1", record)

    def settle_podless_terminate(self, session_id: str, fence_token: str) -> tuple[str, str]:
        """Decide who ends a terminate that began before the session had a pod.

        Call it after looking the pod up by name. Atomic with :meth:`finish_spawn`, so a
        pod recorded at any moment is terminated by exactly one side. Returns
        ``("pod", compute_id)`` when the spawn recorded a pod meanwhile (terminate it
        here), ``("deferred", "")`` when the spawn is still in flight (the fence is
        released; the spawn terminates its pod itself), or ``("none", "")``.
        """
        k = self.keys(session_id)
        verdict, compute_id = self._settle_podless(
            keys=[k.record, self.names_of(session_id).intents, k.fence],
            args=[session_id, fence_token],
        )
        return str(verdict), str(compute_id)

    def finish_terminate(self, session_id: str, reason: str | None = None) -> None:
        """Record a confirmed termination, stop tracking, release the session's quota
        reservation and publish ``terminated`` (one step)."""
        k = self.keys(session_id)
        n = self.names_of(session_id)
        self._finish_terminate(
            keys=[
                k.record,
                n.deadlines,
                n.sessions,
                k.alive,
                k.fence,
                n.intents,
                n.stream_prefix + session_id,
                n.channel_prefix + session_id,
                *self._quota_keys(session_id),
            ],
            args=[
                session_id,
                C.TERMINATED_RECORD_TTL_MS,
                encode(
                    session_id,
                    "status",
                    {"status": SessionStatus.TERMINATED.value, "reason": reason},
                ),
                *n.usage_halves,
            ],
        )
        self._release_quota_after_end(session_id)

    def terminate_failed(self, session_id: str, error: dict[str, Any], retry_in_ms: int) -> None:
        """Release the fence and make the session due again after ``retry_in_ms``."""
        k = self.keys(session_id)
        self._terminate_failed(
            keys=[k.record, self.names_of(session_id).deadlines, k.fence],
            args=[session_id, json.dumps(error), retry_in_ms],
        )

    # ------------------------------------------------------------------ reaper side
    def claim_due(self, limit: int, slack_ms: int) -> list[str]:
        """Ids of the sessions :meth:`claim_due_by_reason` claims (reasons dropped)."""
        return [session_id for session_id, _ in self.claim_due_by_reason(limit, slack_ms)]

    def claim_due_by_reason(self, limit: int, slack_ms: int) -> list[tuple[str, str]]:
        """``(session id, reason)`` of the sessions to end now, each re-scored by
        ``slack_ms`` so a lost terminate makes it due again.

        The reason is ``max_lifetime`` for a session past its hard deadline (touched or
        not) and ``idle_timeout`` for one whose idle clock ran out. A touched session
        whose ``expiring`` warning is due gets it here (published in the same step) and
        stays.
        """

        def claim(n: Names) -> list[Any]:
            return cast(
                list[Any],
                self._claim_due(
                    keys=[n.deadlines],
                    args=[
                        limit,
                        slack_ms,
                        n.alive_prefix,
                        n.record_prefix,
                        C.SESSION_RECORD_GRACE_MS,
                        n.stream_prefix,
                        n.channel_prefix,
                        IDLE_REASON,
                        MAX_LIFETIME_REASON,
                    ],
                ),
            )

        flat = [str(x) for part in self._each_shard(claim) for x in part]
        return list(zip(flat[::2], flat[1::2], strict=True))

    def claim_expired(self, session_id: str, slack_ms: int) -> bool:
        """The keyspace listener's claim on an expired session (same claim as the sweep's:
        whoever moves its deadline past now first terminates it)."""
        return bool(
            self._claim_expired(
                keys=[self.names_of(session_id).deadlines, self.keys(session_id).alive],
                args=[session_id, slack_ms],
            )
        )

    def claim_stale_intents(self, limit: int) -> list[str]:
        """Remove and return spawn intents whose deadline passed."""
        parts = self._each_shard(
            lambda n: cast(list[Any], self._claim_intents(keys=[n.intents], args=[limit]))
        )
        return [str(x) for part in parts for x in part]

    def intent_ids(self) -> set[str]:
        """Session ids with a live spawn intent or a pending cleanup obligation (both
        cover a pod under the session's name, so the orphan scan leaves it to them)."""
        with self.r.pipeline(transaction=False) as pipe:
            for n in self.shards:
                pipe.zrange(n.intents, 0, -1)
                pipe.zrange(n.cleanups, 0, -1)
            parts = cast(list[list[str]], pipe.execute())
        return {str(sid) for part in parts for sid in part}

    # ------------------------------------------------------------------ durable stops
    def request_stop(self, session_id: str, reason: str, resend_after_ms: int) -> str:
        """Record a stop before its terminate is enqueued (see ``_REQUEST_STOP``).

        Returns ``ok`` (recorded; the reaper re-sends the terminate after
        ``resend_after_ms`` unless it finished or holds its fence), ``terminated`` /
        ``failed`` (already over) or ``missing`` (unknown or untracked session).
        """
        n = self.names_of(session_id)
        return str(
            self._request_stop(
                keys=[self.keys(session_id).record, n.sessions, n.stops],
                args=[session_id, reason, resend_after_ms],
            )
        )

    def claim_stops_to_resend(self, resend_after_ms: int, limit: int = 1000) -> list[str]:
        """Ids of recorded stops due for a re-send (their terminate made no progress);
        each is re-scored ``resend_after_ms`` ahead. Ended sessions leave the index."""
        parts = self._each_shard(
            lambda n: cast(
                list[Any],
                self._claim_stops(
                    keys=[n.stops, n.sessions],
                    args=[limit, resend_after_ms, n.record_prefix, n.fence_prefix],
                ),
            )
        )
        return [str(x) for part in parts for x in part]

    # ------------------------------------------------------------------ data-loss guard
    def ensure_epoch(self) -> bool:
        """Write the dataset's epoch if missing (``SET NX``; one per registry shard, so a
        cluster master that lost its shards' data is noticed). True when one was missing."""
        now = str(self.now_ms())
        with self.r.pipeline(transaction=False) as pipe:
            for n in self.shards:
                pipe.set(n.epoch, now, nx=True)
            return any(pipe.execute())

    @property
    def layout(self) -> str:
        """This store's key layout: ``untagged`` or ``tagged:<shards>``."""
        return f"tagged:{self.ks.shards}" if self._tagged else "untagged"

    def layout_mismatch(self) -> str | None:
        """Why this store must not act on the registry, or ``None``: the layout recorded
        in Redis (written on first use) differs from this process's (``ATLAS_REDIS_SHARDS``
        or the Redis URL changed while sessions were recorded under the old names: their
        records are invisible here, and their pods would look like orphans)."""
        key = self.ks.key(LAYOUT_KEY)
        if self.r.set(key, self.layout, nx=True):
            return None
        recorded = cast("str | None", self.r.get(key))
        if recorded is None or recorded == self.layout:
            return None
        return (
            f"ATLAS_REDIS_SHARDS: this Redis holds the {self.ks.namespace!r} registry in "
            f"the {recorded} key layout, but this process is configured for {self.layout}; "
            "sessions recorded under the other layout are invisible here. Restore the "
            "previous ATLAS_REDIS_SHARDS (and Redis URL), or drain the sessions and delete "
            f"{key} before switching."
        )

    def epoch_exists(self) -> bool:
        """Whether this Redis dataset has its epoch (False after a data loss; in the
        tagged layout, False when any shard lost it)."""
        with self.r.pipeline(transaction=False) as pipe:
            for n in self.shards:
                pipe.exists(n.epoch)
            return all(pipe.execute())

    def adopt(
        self,
        session_id: str,
        provider: str,
        pod_name: str,
        compute_id: str,
        compute: dict[str, Any],
        idle_ttl_ms: int,
    ) -> bool:
        """Re-create a minimal ``running`` record for a pod whose record was lost (see
        ``_ADOPT``). False when a record exists (never overwritten)."""
        k, n = self.keys(session_id), self.names_of(session_id)
        return bool(
            self._adopt(
                keys=[k.record, k.alive, n.deadlines, n.sessions],
                args=[
                    session_id,
                    provider,
                    pod_name,
                    compute_id,
                    json.dumps(compute),
                    idle_ttl_ms,
                    C.SESSION_RECORD_GRACE_MS,
                ],
            )
        )

    def now_ms(self) -> int:
        """Redis server time in ms (the registry's clock)."""
        t = self.r.time()
        return int(t[0]) * 1000 + int(t[1]) // 1000


_stores: dict[tuple[int, bool, str], SessionStore] = {}


def _batched(items: Iterator[str], size: int) -> Iterator[list[str]]:
    """``items`` in lists of ``size`` (the last one shorter; none when empty)."""
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def user_index_key(user_json: str, ks: Keyspace | None = None) -> str:
    """The per-user index key of a user given as the JSON form of its id (in ``ks``, else
    the settings' namespace)."""
    ks = ks or keyspace()
    if ks.tagged:
        # its own slot, per user (a hash tag around the user; never cached as a group)
        return ks.key(USER_SESSIONS_KEY).format(user="{" + user_json + "}")
    return ks.key(USER_SESSIONS_KEY).format(user=user_json)


def canonical_user(user_id: Any) -> str:
    """The canonical JSON of a user id (sorted keys): ``{"a":1,"b":2}`` and
    ``{"b":2,"a":1}`` are one user. Raises ``TypeError``/``ValueError`` for non-JSON."""
    return json.dumps(user_id, allow_nan=False, sort_keys=True)


def store_for(
    client: redis.Redis, *, publish_heartbeats: bool = False, namespace: str | None = None
) -> SessionStore:
    """A cached :class:`SessionStore` for ``client`` (scripts hashed once, not per call)
    in ``namespace`` (default: ``ATLAS_NAMESPACE`` now)."""
    ns = keyspace(namespace).namespace
    key = (id(client), publish_heartbeats, ns)
    store = _stores.get(key)
    if store is None or store.r is not client:
        store = _stores[key] = SessionStore(
            client, publish_heartbeats=publish_heartbeats, namespace=ns
        )
    return store


def info_from_reads(
    session_id: str, record: dict[str, str], alive_pttl_ms: int, redis_time: tuple[int, int]
) -> SessionInfo:
    """A :class:`SessionInfo` from one pipelined read (``HGETALL`` of the record, ``PTTL``
    of its idle clock, ``TIME``), shared by the sync and asyncio ``info``.

    Raises:
        NotTracked: the record is missing (unknown session, or expired after its end).
    """
    parsed = SessionRecord.from_hash(record)
    if parsed is None:
        raise NotTracked(f"session {session_id!r} is not tracked")
    secs, micros = redis_time
    now_ms = int(secs) * 1000 + int(micros) // 1000
    info = SessionInfo.from_record(parsed, now_ms)
    if alive_pttl_ms > 0 and info.idle_ttl_ms:
        # touch() does not write last activity on its fast path: the idle clock has it
        info.last_activity_ms = now_ms - (info.idle_ttl_ms - int(alive_pttl_ms))
    return info


class AsyncSessionStore:
    """The caller-side reads and touch of :class:`SessionStore` on a ``redis.asyncio``
    client (same scripts, same round trips), for the asyncio client API.

    Args:
        client: a ``decode_responses=True`` asyncio Redis client (bound to its loop).
        publish_heartbeats: as for :class:`SessionStore`.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        publish_heartbeats: bool = False,
        namespace: str | None = None,
    ) -> None:
        self.r = client
        self.publish_heartbeats = publish_heartbeats
        self.ks = keyspace(namespace)
        self.shards = [Names(shard) for shard in self.ks.all_shards()]
        self.n = self.shards[0]
        self._touch_fast = client.register_script(_TOUCH_FAST)
        self._touch = client.register_script(_TOUCH)
        self._list_user = client.register_script(_LIST_USER)
        self._info = client.register_script(_INFO)

    async def touch(self, session_id: str) -> None:
        """asyncio twin of :meth:`SessionStore.touch`.

        Raises:
            NotTracked: unknown, terminated or terminating session.
        """
        n = _shard_names(self.ks, self.shards, session_id)
        if not self.publish_heartbeats:
            fast = await cast(
                "Awaitable[Any]", self._touch_fast(keys=[n.alive_prefix + session_id])
            )
            if fast == 1:
                return
        keys, args = _touch_args(session_id, self.publish_heartbeats, n)
        result = await cast("Awaitable[Any]", self._touch(keys=keys, args=args))
        _touch_verdict(session_id, int(result))

    async def info(self, session_id: str) -> SessionInfo:
        """asyncio twin of :meth:`SessionStore.info`.

        Raises:
            NotTracked: no such session (or its record expired).
        """
        k = Keys(session_id, self.ks)
        reply = await cast("Awaitable[Any]", self._info(keys=[k.record, k.alive]))
        flat, pttl, secs, micros = reply
        return info_from_reads(session_id, flat_hash(flat), int(pttl), (int(secs), int(micros)))

    async def list_user_records(
        self, user_json: str, *, offset: int = 0, limit: int = 100
    ) -> list[SessionRecord]:
        """asyncio twin of :meth:`SessionStore.list_user_records`."""
        if self.ks.tagged:
            index = user_index_key(user_json, self.ks)
            ids = cast(list[str], await self.r.zrevrange(index, offset, offset + limit - 1))
            async with self.r.pipeline(transaction=False) as pipe:
                for sid in ids:
                    pipe.hgetall(Keys(sid, self.ks).record)
                rows = cast(list[dict[str, str]], await pipe.execute()) if ids else []
            gone, page = _split_page(ids, [SessionRecord.from_hash(row) for row in rows])
            if gone:
                await self.r.zrem(index, *gone)
            return page
        rows = await cast(
            "Awaitable[Any]",
            self._list_user(
                keys=[user_index_key(user_json, self.ks)],
                args=[self.n.record_prefix, offset, limit],
            ),
        )
        return _records_of_rows(rows)


__all__ = [
    "CLEANUPS_KEY",
    "EPOCH_KEY",
    "IndexCounts",
    "LAYOUT_KEY",
    "SCAN_BATCH",
    "STOPS_KEY",
    "USER_SESSIONS_KEY",
    "AsyncSessionStore",
    "Keys",
    "Names",
    "SessionInfo",
    "SessionStore",
    "TerminateStart",
    "canonical_user",
    "info_from_reads",
    "store_for",
    "user_index_key",
]
