"""One rate budget for the whole fleet: a Redis token bucket per provider API key.

Retries are per worker: when a provider answers 429, the other workers (and web processes)
used to keep hammering it. With ``ATLAS_RATE_BUDGET=true`` every provider HTTP request
first takes a token from a bucket in Redis shared by every process using the same
(provider, API-key fingerprint, HTTP API) — e.g. RunPod ``management`` for one key — so the
fleet as a whole stays under the provider's quota.

The bucket (one Lua script, :data:`ACQUIRE_LUA`):

* refills by the time elapsed on Redis's own clock (``TIME``), so process clocks never
  matter, at ``rate`` tokens per millisecond up to ``cap`` tokens;
* is **sized from the provider's** ``RateLimit-Policy`` header when it sends one (refill at
  the slowest window's ``q / w``, room for the smallest window's ``q``), else from
  ``ATLAS_RATE_BUDGET_PER_MINUTE``;
* is **drained by** the ``RateLimit`` header's remaining count: the bucket never holds
  more than the provider says is left, and once the window it last heard of has reset
  (``t``) it fills up to the fresh window's count instead of trickling back at the refill
  rate (answers that cross in flight can be off by the requests in flight, which the 429
  path below absorbs); at ``r=0`` the budget pauses until the window's reset;
* is **paused fleet-wide** by a 429's ``Retry-After``: a pause key with ``PX`` that every
  process's next acquire respects.

Request classes share the key's bucket but not equally: a class may take a token only when
the bucket keeps its class's floor afterwards (:data:`FLOORS`). Terminates need a single
token (floor 0), spawns and other writes (a spawn's status polls included) leave 10 % of
the bucket for terminates, and catalog and list reads leave a quarter of it, so when the
bucket runs low catalog and list calls wait first and a terminate — the call that stops a
pod costing money — is never starved. When the provider reports its window, the reserve
shrinks with the time the window has left (none is needed for a window about to reset),
so lower classes never lose more than the rest of a window. One bucket rather than one per
class, because the provider counts every request of the key against one quota: separate
buckets would either over-spend it or leave capacity idle.

Redis Cluster: :data:`ACQUIRE_LUA` and :data:`OBSERVE_LUA` declare two keys, the bucket
and its pause key, which share one hash tag per bucket in the tagged layout
(``atlas:{rb.<provider>.<api>.<fingerprint>}:ratebudget:...``); nothing is built in Lua.

Redis failures never fail a cloud call: the budget logs and lets the request through (the
provider's own 429 handling still applies). A request that cannot get a token within
``ATLAS_RATE_BUDGET_MAX_WAIT_S`` raises :class:`~atlas_tasks.errors.RateLimitedError`.

Example::

    budget = RateBudget(redis_client, provider="runpod", api="management",
                        key_fingerprint=fingerprint(api_key), per_minute=60)
    budget.acquire(ApiClass.SPAWN)           # blocks until a token is free
    ...                                      # send the request
    budget.observe(status=200, rate_limit=parsed, retry_after_s=None)
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import TYPE_CHECKING, Any, cast

import redis

from atlas_tasks.errors import RateLimitedError
from atlas_tasks.key_groups import budget_group, fill
from atlas_tasks.keyspace_names import keyspace

if TYPE_CHECKING:
    from atlas_tasks.providers.base import ProviderContext
    from atlas_tasks.providers.ratelimit import RateLimit

logger = logging.getLogger(__name__)

#: Bucket hash (fields ``tokens``, ``ts``, ``rate``, ``cap``) of one provider API and key.
BUDGET_KEY = "atlas:ratebudget:{provider}:{api}:{fingerprint}"
#: Fleet-wide pause of the same bucket (set with ``PX`` from a 429's ``Retry-After``).
PAUSE_KEY = "atlas:ratebudget:{provider}:{api}:{fingerprint}:pause"

#: An idle bucket expires after this long (it is rebuilt full, from settings or headers).
BUCKET_TTL_MS = 3_600_000

#: Pause after a 429 that carries no usable ``Retry-After``.
DEFAULT_429_PAUSE_MS = 1_000

#: Longest single sleep while waiting for a token (the wait is re-checked after it).
MAX_SLEEP_S = 5.0


class ApiClass(StrEnum):
    """Priority class of a provider request (highest first)."""

    TERMINATE = "terminate"
    SPAWN = "spawn"
    READ = "read"


#: Share of the bucket a class must leave behind when it takes a token (capped at
#: ``cap - 1`` tokens, so a one-token bucket has no priorities at all).
FLOORS: Mapping[ApiClass, float] = {
    ApiClass.TERMINATE: 0.0,
    ApiClass.SPAWN: 0.1,
    ApiClass.READ: 0.25,
}

#: Path words that mark a catalog read even when the last segment is an id.
_CATALOG_WORDS = ("catalog", "gpu-types", "instance-types", "regions", "offers")

# Why one script: the refill, the priority check and the take must be atomic across every
# process, and Redis's clock is the only one all of them share.
ACQUIRE_LUA = """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {0, pause} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate', 'cap', 'reset_at', 'win')
local rate = tonumber(h[3]) or tonumber(ARGV[1])
local cap = tonumber(h[4]) or tonumber(ARGV[2])
local tokens = tonumber(h[1]) or cap
local ts = tonumber(h[2]) or now
if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate) end
-- The reserve protects the rest of the provider's window: it shrinks as the window runs
-- out (a window about to reset needs none), so lower classes are never held back for
-- more than the window has left.
local share = 1
local reset_at, win = tonumber(h[5]), tonumber(h[6])
if reset_at and win and win > 0 then
  share = math.max(0, math.min(1, (reset_at - now) / win))
end
local floor = math.min(cap * tonumber(ARGV[3]) * share, cap - 1)
if floor < 0 then floor = 0 end
local wait = 0
if tokens >= floor + 1 - 1e-9 then
  tokens = tokens - 1
else
  wait = math.ceil((floor + 1 - tokens) / rate)
  if wait < 1 then wait = 1 end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if wait == 0 then return {1, 0} end
return {0, wait}
"""

# ARGV: remaining (-1: not reported), rate per ms (-1: no policy), cap (-1), pause ms (0),
# ttl ms, default rate, default cap, ms until that window resets (0: not reported), that
# window's length in ms (0: not reported).
OBSERVE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local h = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'rate', 'cap', 'reset_at')
local rate = tonumber(h[3]) or tonumber(ARGV[6])
local cap = tonumber(h[4]) or tonumber(ARGV[7])
local tokens = tonumber(h[1]) or cap
local ts = tonumber(h[2]) or now
if now > ts then tokens = math.min(cap, tokens + (now - ts) * rate) end
if tonumber(ARGV[2]) > 0 then rate = tonumber(ARGV[2]) end
local new_cap = tonumber(ARGV[3])
if new_cap > 0 and new_cap ~= cap then
  -- Resized by the provider's policy: keep the bucket as full as it was (a full bucket
  -- sized from settings is a full bucket at the provider's size); remaining clamps below.
  tokens = tokens * new_cap / cap
  cap = new_cap
end
tokens = math.min(cap, tokens)
local remaining = tonumber(ARGV[1])
if remaining >= 0 then
  -- Drain to what the provider says is left; fill up to it only once the window the
  -- bucket last heard of has reset (within a window the bucket keeps pacing).
  local known_reset = tonumber(h[5])
  if remaining < tokens then
    tokens = remaining
  elseif known_reset == nil or now >= known_reset then
    tokens = math.min(cap, remaining)
  end
  local window_ms = tonumber(ARGV[8])
  if window_ms > 0 then redis.call('HSET', KEYS[1], 'reset_at', now + window_ms) end
  if tonumber(ARGV[9]) > 0 then redis.call('HSET', KEYS[1], 'win', ARGV[9]) end
end
local pause = tonumber(ARGV[4])
if pause > 0 then
  tokens = 0
  if redis.call('PTTL', KEYS[2]) < pause then
    redis.call('SET', KEYS[2], '1', 'PX', pause)
  end
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', now, 'rate', tostring(rate),
           'cap', tostring(cap))
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""


def fingerprint(api_key: str | None) -> str:
    """First 16 hex digits of the key's SHA-256: names the bucket, never reveals the key."""
    return hashlib.sha256((api_key or "").encode()).hexdigest()[:16]


def classify(method: str, path: str, body: Any = None) -> ApiClass:
    """The priority class of a request, from its method, path and JSON body.

    ``DELETE``, a path naming ``terminate`` (Lambda's ``instance-operations/terminate``) and
    a RunPod ``{"action": "terminate"}`` are terminates. Catalog reads and list reads (a
    ``GET`` of a collection: the last path segment is a plain word such as ``pods``) are
    reads. Every other call — creates, starts, stops, and the ``GET`` of one resource a
    spawn polls until it runs — is a spawn-class write.
    """
    method = method.upper()
    lowered = path.lower()
    if method == "DELETE" or "terminate" in lowered:
        return ApiClass.TERMINATE
    if isinstance(body, Mapping) and body.get("action") == "terminate":
        return ApiClass.TERMINATE
    if method in ("GET", "HEAD", "OPTIONS"):
        last = lowered.rstrip("/").rsplit("/", 1)[-1]
        if (
            any(word in lowered for word in _CATALOG_WORDS)
            or not last
            or (last.replace("-", "").replace("_", "").isalpha())
        ):
            return ApiClass.READ
    return ApiClass.SPAWN


def policy_size(limit: RateLimit | None, burst: int | None) -> tuple[float, int] | None:
    """``(tokens per ms, bucket size)`` from a ``RateLimit-Policy``: the slowest window's
    ``q / w``, and room for the smallest window's ``q`` (capped by ``burst`` when given).
    ``None`` without a usable policy.

    A bucket as large as the provider's window quota lets a quiet fleet burst as the
    provider itself allows; it never overspends, because every answer's ``RateLimit``
    remaining drains the bucket and an exhausted window pauses it until the reset.
    """
    if limit is None:
        return None
    windows = [
        (w.quota, w.window_s)
        for w in limit.windows
        if w.quota and w.window_s and w.quota > 0 and w.window_s > 0
    ]
    if not windows:
        return None
    rate = min(q / (w * 1000.0) for q, w in windows)
    cap = min(q for q, _ in windows)
    return rate, max(1, min(cap, burst) if burst else cap)


def _remaining(limit: RateLimit | None) -> tuple[int, int, int, int]:
    """``(fewest requests left in any window or -1, ms until that window resets or 0,
    that window's length in ms or 0, ms until every exhausted window has reset or 0)``."""
    if limit is None:
        return -1, 0, 0, 0
    left = [w for w in limit.windows if w.remaining is not None]
    if not left:
        return -1, 0, 0, 0
    tightest = min(left, key=lambda w: w.remaining or 0)
    reset = limit.reset_after_s
    return (
        tightest.remaining or 0,
        (tightest.reset_s or 0) * 1000,
        (tightest.window_s or 0) * 1000,
        reset * 1000 if reset else 0,
    )


class RateBudget:
    """The shared token bucket of one (provider, API key, HTTP API).

    Args:
        client: Redis client (any ``decode_responses`` setting).
        provider: provider name (``runpod``...).
        api: the provider's HTTP API (``management``, ``runtime``...).
        key_fingerprint: :func:`fingerprint` of the API key.
        per_minute: requests per minute until the provider sends a ``RateLimit-Policy``.
        burst: largest bucket (tokens a quiet fleet may spend at once); ``None``: the
            provider's smallest window quota (``per_minute`` until it sends a policy).
        max_wait_s: longest :meth:`acquire` waits before raising ``RateLimitedError``.
        monotonic: clock for the wait deadline (tests replace it).
        rand: jitter source in [0, 1) so waiting processes do not retry in lockstep.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        provider: str,
        api: str,
        key_fingerprint: str,
        per_minute: float,
        burst: int | None = None,
        max_wait_s: float = 60.0,
        monotonic: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        self.provider = provider
        self.api = api
        # In the deployment's namespace: deployments sharing an API key budget separately.
        # Both scripts touch the bucket and its pause key: one hash-tag group per bucket
        # (tagged layout, Redis Cluster), so buckets spread over the cluster's slots.
        ks = keyspace().group(budget_group(provider, api, key_fingerprint))
        names = {"provider": provider, "api": api, "fingerprint": key_fingerprint}
        self.key = fill(ks, BUDGET_KEY, **names)
        self.pause_key = fill(ks, PAUSE_KEY, **names)
        self.default_rate = max(per_minute, 1e-6) / 60_000.0
        self.burst = max(1, int(burst)) if burst else None
        quota = max(1, int(per_minute))
        self.default_cap = min(self.burst, quota) if self.burst else quota
        self.max_wait_s = max_wait_s
        self.monotonic = monotonic
        self.rand = rand
        self._acquire = client.register_script(ACQUIRE_LUA)
        self._observe = client.register_script(OBSERVE_LUA)

    def __repr__(self) -> str:
        return f"RateBudget(key={self.key!r})"

    def try_acquire(self, api_class: ApiClass | str = ApiClass.READ) -> int:
        """Take one token if ``api_class`` may; returns 0 when taken, else the ms to wait."""
        floor = FLOORS[ApiClass(api_class)]
        granted, wait = cast(
            "list[int]",
            self._acquire(
                keys=[self.key, self.pause_key],
                args=[repr(self.default_rate), self.default_cap, repr(floor), BUCKET_TTL_MS],
            ),
        )
        return 0 if int(granted) == 1 else max(1, int(wait))

    def acquire(
        self,
        api_class: ApiClass | str = ApiClass.READ,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> float:
        """Block until a token is taken; returns the seconds spent waiting.

        Raises:
            RateLimitedError: no token within ``max_wait_s``.
        """
        started = self.monotonic()
        waited = 0.0
        while True:
            wait_ms = self.try_acquire(api_class)
            if wait_ms == 0:
                return waited
            elapsed = self.monotonic() - started
            if elapsed >= self.max_wait_s:
                raise RateLimitedError(
                    f"fleet rate budget of {self.provider} {self.api}: no {api_class} slot "
                    f"within {self.max_wait_s:g}s (ATLAS_RATE_BUDGET_MAX_WAIT_S)",
                    provider=self.provider,
                )
            # Jitter spreads the waiters of many processes over the refill instead of
            # having all of them retry on the same millisecond.
            delay = min(
                wait_ms / 1000.0 * (1.0 + 0.25 * self.rand()),
                MAX_SLEEP_S,
                max(self.max_wait_s - elapsed, 0.001),
            )
            sleep(delay)
            waited += delay

    def observe(
        self,
        *,
        status: int | None,
        rate_limit: RateLimit | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        """Fold one answer into the bucket: resize from ``RateLimit-Policy``, drain to the
        ``RateLimit`` remaining, and pause the fleet on a 429 (``Retry-After``) or when a
        window is exhausted (until its reset)."""
        sized = policy_size(rate_limit, self.burst)
        remaining, window_ms, length_ms, reset_ms = _remaining(rate_limit)
        pause_ms = 0
        if status == 429:
            pause_ms = int(retry_after_s * 1000) if retry_after_s else DEFAULT_429_PAUSE_MS
        elif remaining == 0 and reset_ms:
            pause_ms = reset_ms
        if sized is None and remaining < 0 and pause_ms == 0:
            return  # nothing learned: save the round trip
        rate, cap = sized if sized is not None else (-1.0, -1)
        self._observe(
            keys=[self.key, self.pause_key],
            args=[
                remaining,
                repr(rate),
                cap,
                pause_ms,
                BUCKET_TTL_MS,
                repr(self.default_rate),
                self.default_cap,
                window_ms,
                length_ms,
            ],
        )

    def pause(self, ms: int) -> None:
        """Pause every process's requests on this bucket for ``ms`` (never shortens one)."""
        self.observe(status=429, retry_after_s=ms / 1000.0)

    def state(self) -> dict[str, float]:
        """The stored bucket (``tokens``, ``rate`` per ms, ``cap``, ``pause_ms``), for
        tests and the ops console. Tokens are as of the last take, not refilled."""
        raw = cast("dict[Any, Any]", self.client.hgetall(self.key))
        out = {
            (k.decode() if isinstance(k, bytes) else str(k)): float(v)
            for k, v in raw.items()
            if k not in ("ts", b"ts", "reset_at", b"reset_at", "win", b"win")
        }
        out["pause_ms"] = float(max(0, int(self.client.pttl(self.pause_key))))
        return out


def budget_for(context: ProviderContext, *, provider: str, api: str) -> RateBudget | None:
    """The fleet budget an :class:`~atlas_tasks.providers.http.HttpClient` should use, or
    ``None`` when ``ATLAS_RATE_BUDGET`` is off, or when the context carries an in-process
    transport (unit tests' mock and ASGI transports) and ``ATLAS_RATE_BUDGET_IN_PROCESS``
    is off."""
    settings = context.settings
    if not settings.rate_budget:
        return None
    if context.transport is not None and not settings.rate_budget_in_process:
        return None
    # Imported here: the HTTP layer needs Redis only when the budget is on.
    from atlas_tasks.redis_conn import get_redis

    rates = settings.rate_budget_per_minute
    per_minute = rates.get(provider, rates.get("default", 60.0))
    return RateBudget(
        get_redis(settings.redis_url),
        provider=provider,
        api=api,
        key_fingerprint=fingerprint(context.api_key),
        per_minute=per_minute,
        burst=settings.rate_budget_burst,
        max_wait_s=settings.rate_budget_max_wait_s,
    )


#: Redis errors the HTTP layer swallows around the budget (fail open: the call goes on).
BUDGET_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

__all__ = [
    "ACQUIRE_LUA",
    "BUDGET_ERRORS",
    "BUDGET_KEY",
    "FLOORS",
    "OBSERVE_LUA",
    "PAUSE_KEY",
    "ApiClass",
    "RateBudget",
    "budget_for",
    "classify",
    "fingerprint",
    "policy_size",
]
