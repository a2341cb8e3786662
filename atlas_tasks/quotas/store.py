"""Redis store of quotas and budgets: typed records, key layout and the Lua that keeps them.

Everything here is a few Redis hashes and strings per user or tenant, changed only by the
Lua scripts of this module, so every check-and-change is atomic on the Redis server (no
lock, no retry loop) and holds across any number of processes and machines.

Key layout (declared once, below; ``{scope}`` is ``user`` or ``tenant``):

* :data:`LIMITS_KEY` hash — the scope's limits; a missing field means "no limit".
* :data:`USAGE_KEY` hash — live ``sessions`` and committed ``hourly_micros``: the sums of
  the reservations held right now for that user or tenant.
* :data:`SPEND_KEY` string — USD spent in one calendar month (UTC, by Redis ``TIME``).
  The month is part of the key, so a new month starts at zero by itself; each month's key
  expires :data:`SPEND_RETENTION_S` after that month ends.
* :data:`RESERVATION_KEY` hashes — what each session's admission reserved (USD per hour,
  user, tenant), one field per session in one of :data:`RESERVATION_BUCKETS` bucket
  hashes (:func:`reservation_key`; the encoding is :func:`encode_reservation`). The
  field is the receipt that makes release idempotent: releasing deletes it in the same
  script that gives back what it lists, so a second release finds nothing.
* :data:`RESERVATIONS_INDEX_KEY` sorted set — every live reservation, scored by its
  admission time (ms): the only place that time is kept. Operators and the orphan sweep
  (:meth:`QuotaStore.release_orphaned`) find old reservations through it.
* :data:`PRICES_KEY` hash — a provider's catalog prices (USD per GPU-hour), refreshed from
  ``Provider.list_gpu_types()``.

**Why buckets.** A reservation used to be a hash key of its own (``atlas:quota:res:<id>``):
about 408 B of Redis memory with its index entry, measured as the ``used_memory`` delta
over 10,000 admissions (16-character session ids, short user and tenant ids). As a field
of a bucket hash it costs about 196 B, of which the index entry is about 127 B and the
field about 70 B: Redis keeps a hash of up to ``hash-max-listpack-entries`` fields (128
by default) whose values fit ``hash-max-listpack-value`` (64 B by default, 1024 in the
shipped config) as one flat listpack, with no per-key or per-field allocation. 1,024
buckets hold about 100 reservations each at 100,000 live sessions. A bucket with more
fields, or with a value longer than that limit (long user and tenant ids on a stock
Redis), becomes an ordinary hashtable (about 115 B a field plus the ids): still correct,
only larger. The bucket count is part of the layout (a session's bucket is
``crc32(id) % 1024``): changing it strands live reservations, like renaming a key would.
Reservations written by the previous layout (one hash per session,
:data:`LEGACY_RESERVATION_KEY`) are still found, released and corrected (which moves
them into their bucket), so an upgrade with live sessions leaks no usage.

**Redis Cluster.** Every key here is built through ``keyspace().group("quota")``, so in
the tagged layout they all carry the hash tag ``{quota}`` and live in one slot: admission
must check and change the user's *and* the tenant's usage (and read their month's spend)
in one atomic script, and a user's sessions span every tenant and vice versa, so no finer
tag can hold both. The slot is touched only at admission, at a session's end (release)
and when it starts running (:meth:`QuotaStore.correct`); never by ``touch``, so its load
is the spawn rate, not the heartbeat rate. In the untagged layout the names are exactly
the previous ones.

Money is stored as integer micro-dollars (1 USD = 1,000,000): counters move with exact
integer arithmetic, so usage never drifts from the sum of the reservations.
"""

from __future__ import annotations

import logging
import math
import threading
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal, cast

import redis

from atlas_tasks.errors import QuotaExceeded, validation_error
from atlas_tasks.keyspace_names import TEMPLATE_PREFIX, Keyspace, keyspace
from atlas_tasks.redis_lua import flat_hash
from atlas_tasks.specs import GpuType

log = logging.getLogger(__name__)

#: Set once an admission without a catalog price was logged at WARNING (see try_admit).
_no_price_warned = threading.Event()

# --------------------------------------------------------------------------- keys

#: The hash tag of every quota key in the tagged layout (one slot; see the module docs).
QUOTA_GROUP: Final = "quota"

#: Hash of a user's or tenant's limits: ``max_sessions``, ``max_hourly_micros``,
#: ``monthly_micros``. A missing field is no limit; no key at all is no limit at all.
LIMITS_KEY: Final = "atlas:quota:{scope}:{id}:limits"
#: Hash of a user's or tenant's live usage: ``sessions`` (count) and ``hourly_micros``
#: (committed micro-USD per hour), the sums of the reservations held right now.
USAGE_KEY: Final = "atlas:quota:{scope}:{id}:usage"
#: String: micro-USD spent by a user or tenant in ``{month}`` (``YYYY-MM``, UTC, from
#: Redis ``TIME``). Expires :data:`SPEND_RETENTION_S` after the end of its month.
SPEND_KEY: Final = "atlas:quota:{scope}:{id}:spend:{month}"
#: Hash of reservation bucket ``{bucket}`` (``0`` to ``RESERVATION_BUCKETS - 1``): field
#: = session id, value = :func:`encode_reservation` of what its admission reserved.
#: No TTL on purpose: an expiry cannot give the reserved amounts back to the usage hashes,
#: so a reservation ends only by :meth:`QuotaStore.release`.
RESERVATION_KEY: Final = "atlas:quota:resv:{bucket}"
#: How many reservation buckets (part of the layout: see the module docs).
RESERVATION_BUCKETS: Final = 1024
#: The previous layout's reservation: one hash per session (fields ``session_id``,
#: ``hourly_micros``, ``price_known``, ``admitted_ms``, ``user_id``, ``tenant_id``,
#: ``corrected_ms``). Never written any more; read, released and migrated by the scripts
#: (which derive its name from the bucket key's, so the release signature is unchanged).
LEGACY_RESERVATION_KEY: Final = "atlas:quota:res:{session}"
#: Sorted set of live reservations: member = session id, score = admission time (ms).
RESERVATIONS_INDEX_KEY: Final = "atlas:quota:reservations"
#: Hash of one provider's catalog prices in micro-USD per GPU-hour: field ``{gpu}``
#: (on-demand) and ``{gpu}:spot``, where ``{gpu}`` is the canonical name and the
#: provider's own id, lower-cased; plus ``@refreshed_ms``.
PRICES_KEY: Final = "atlas:quota:prices:{provider}"

#: How long a month's spend key lives after its month ends (two more months readable).
SPEND_RETENTION_S: Final = 62 * 24 * 3600

#: Micro-dollars per dollar.
MICROS: Final = 1_000_000
#: Largest amount accepted anywhere (USD): keeps every counter an exact integer in Lua's
#: doubles (2**53 micro-USD is about 9 billion USD).
MAX_USD: Final = 1_000_000_000.0
#: Longest user or tenant id accepted.
MAX_ID_LENGTH: Final = 200

Scope = Literal["user", "tenant"]
#: The scopes a limit can belong to, in the order admission checks them.
SCOPES: Final[tuple[Scope, ...]] = ("user", "tenant")

LimitName = Literal["max_sessions", "max_hourly_usd", "monthly_usd"]


def quota_keyspace(namespace: str | None = None) -> Keyspace:
    """The keyspace every quota key is built in: ``namespace``'s (default:
    ``ATLAS_NAMESPACE``) ``{quota}`` group in the tagged layout, the namespace's own
    names in the untagged one (see the module docs for why one slot)."""
    return keyspace(namespace).group(QUOTA_GROUP)


def _name(template: str, namespace: str | None = None, /, **fields: object) -> str:
    # The quota keyspace's prefix + the template's rest, formatted. Not
    # ``ks.key(template).format()``: a tagged name holds a literal ``{quota}`` that
    # str.format would read as a placeholder; and not ``ks.key(formatted)``, which would
    # cache one name per user, tenant and session.
    return quota_keyspace(namespace).key_prefix + template[len(TEMPLATE_PREFIX) :].format(**fields)


def usage_key_halves(namespace: str | None = None) -> tuple[str, str]:
    """The usage key around ``{scope}:{id}`` in ``namespace`` (default: ``ATLAS_NAMESPACE``):
    scripts that learn the scope from a reservation join the halves around it."""
    prefix, suffix = _name(USAGE_KEY, namespace, scope="\0", id="\0").split("\0:\0")
    return prefix, suffix


def limits_key(scope: Scope, scope_id: str, *, namespace: str | None = None) -> str:
    """Redis key of a scope's limits hash (in ``namespace``, default the setting's)."""
    return _name(LIMITS_KEY, namespace, scope=scope, id=scope_id)


def usage_key(scope: Scope, scope_id: str, *, namespace: str | None = None) -> str:
    """Redis key of a scope's usage hash (in ``namespace``, default the setting's)."""
    return _name(USAGE_KEY, namespace, scope=scope, id=scope_id)


def spend_key(scope: Scope, scope_id: str, month: str, *, namespace: str | None = None) -> str:
    """Redis key of a scope's spend in ``month`` (``YYYY-MM``; in ``namespace``, default
    the setting's)."""
    return _name(SPEND_KEY, namespace, scope=scope, id=scope_id, month=month)


def reservation_bucket(session_id: str) -> int:
    """The reservation bucket of ``session_id`` (``crc32 % RESERVATION_BUCKETS``)."""
    return zlib.crc32(session_id.encode()) % RESERVATION_BUCKETS


def reservation_key(session_id: str, namespace: str | None = None) -> str:
    """Redis key of the bucket hash holding ``session_id``'s reservation (in
    ``namespace``, default the setting's); the session id is its field.

    This is the ``res`` argument of :data:`LUA_QUOTA_RELEASE`. The key is shared with
    the other sessions of the bucket: test a session's reservation with
    :meth:`QuotaStore.reservation` (or ``HEXISTS key id``), not ``EXISTS key``.
    """
    return _name(RESERVATION_KEY, namespace, bucket=reservation_bucket(session_id))


def legacy_reservation_key(session_id: str, namespace: str | None = None) -> str:
    """Redis key of ``session_id``'s reservation in the previous layout (one hash each)."""
    return _name(LEGACY_RESERVATION_KEY, namespace, session=session_id)


def reservations_index_key(namespace: str | None = None) -> str:
    """Redis key of the live reservations' index (in ``namespace``, default the setting's)."""
    return quota_keyspace(namespace).key(RESERVATIONS_INDEX_KEY)  # no placeholders


def prices_key(provider: str, *, namespace: str | None = None) -> str:
    """Redis key of a provider's cached catalog prices (in ``namespace``, default the
    setting's)."""
    return _name(PRICES_KEY, namespace, provider=provider)


def _spend_prefix(scope: Scope, scope_id: str, namespace: str | None) -> str:
    # The scripts append the month they read from Redis TIME.
    return spend_key(scope, scope_id, "", namespace=namespace)


#: Separator of :func:`encode_reservation`'s fields: ids never contain it (check_id
#: refuses whitespace), and neither do integers.
_SEP: Final = "\t"


def encode_reservation(
    hourly_micros: int,
    price_known: bool,
    user_id: str | None,
    tenant_id: str | None,
    corrected_at_ms: int | None = None,
) -> str:
    """A reservation bucket field's value:
    ``<hourly_micros>\\t<1|0 price known>\\t<user>\\t<tenant>[\\t<corrected ms>]``
    (an empty id: not counted there). The admission time is the index's score, and the
    session id the field's name, so neither is repeated here (about 25 bytes in all)."""
    parts = [str(int(hourly_micros)), "1" if price_known else "0", user_id or "", tenant_id or ""]
    if corrected_at_ms is not None:
        parts.append(str(int(corrected_at_ms)))
    return _SEP.join(parts)


def decode_reservation(session_id: str, value: str, admitted_at_ms: int) -> Reservation:
    """Read back :func:`encode_reservation` (``admitted_at_ms``: the index's score)."""
    parts = value.split(_SEP)
    parts += [""] * (5 - len(parts))
    return Reservation(
        session_id=session_id,
        user_id=parts[2] or None,
        tenant_id=parts[3] or None,
        hourly_usd=to_usd(int(parts[0] or 0)),
        price_known=parts[1] != "0",
        admitted_at_ms=admitted_at_ms,
        corrected_at_ms=_opt_int(parts[4]),
    )


# --------------------------------------------------------------------------- validation


def to_micros(field: str, usd: Any) -> int:
    """USD → integer micro-USD; refuses booleans, non-numbers, NaN, negatives, huge values."""
    if isinstance(usd, bool) or not isinstance(usd, int | float):
        raise validation_error(field, f"must be a number of USD, got {type(usd).__name__}")
    if not math.isfinite(usd):
        raise validation_error(field, "must be a finite number")
    if usd < 0:
        raise validation_error(field, f"must be >= 0, got {usd}")
    if usd > MAX_USD:
        raise validation_error(field, f"must be <= {MAX_USD:.0f}, got {usd}")
    return round(usd * MICROS)


def to_usd(micros: int) -> float:
    """Integer micro-USD → USD."""
    return micros / MICROS


def check_scope(scope: Any) -> Scope:
    """``scope`` if it is ``"user"`` or ``"tenant"``; a validation error naming it otherwise."""
    if scope not in SCOPES:
        raise validation_error("scope", f"must be 'user' or 'tenant', got {scope!r}")
    return cast(Scope, scope)


def check_id(field: str, value: Any) -> str:
    """A user/tenant id as a string (ints are accepted: Django primary keys)."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise validation_error(field, f"must be a string, got {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_ID_LENGTH:
        raise validation_error(field, f"must be 1 to {MAX_ID_LENGTH} characters")
    if any(ch.isspace() or not ch.isprintable() for ch in text):
        raise validation_error(field, "must not contain spaces or control characters")
    return text


def _check_session(session_id: Any) -> None:
    if not isinstance(session_id, str) or not session_id:
        raise validation_error("session_id", "must be a non-empty string")


def _check_count(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise validation_error(field, f"must be an integer, got {type(value).__name__}")
    if value < 0:
        raise validation_error(field, f"must be >= 0, got {value}")
    return value


# --------------------------------------------------------------------------- records


def _opt_int(value: str | None) -> int | None:
    return int(value) if value not in (None, "") else None


@dataclass(frozen=True, slots=True)
class Limits:
    """A user's or tenant's limits; ``None`` is no limit.

    Attributes:
        max_sessions: most sessions alive at once.
        max_hourly_usd: most USD per hour committed by live sessions together.
        monthly_usd: the calendar month's budget (UTC). A session is admitted only while
            the month's spend plus one more hour of every live session, the new one
            included, fits in it.
    """

    max_sessions: int | None = None
    max_hourly_usd: float | None = None
    monthly_usd: float | None = None

    @classmethod
    def build(
        cls, *, max_sessions: Any = None, max_hourly_usd: Any = None, monthly_usd: Any = None
    ) -> Limits:
        """Validated limits (a validation error names the first bad field)."""
        return cls(
            max_sessions=None
            if max_sessions is None
            else _check_count("max_sessions", max_sessions),
            max_hourly_usd=None
            if max_hourly_usd is None
            else to_usd(to_micros("max_hourly_usd", max_hourly_usd)),
            monthly_usd=None
            if monthly_usd is None
            else to_usd(to_micros("monthly_usd", monthly_usd)),
        )

    def to_hash(self) -> dict[str, str]:
        """The Redis hash (micro-USD integers; unset limits are absent)."""
        out: dict[str, str] = {}
        if self.max_sessions is not None:
            out["max_sessions"] = str(self.max_sessions)
        if self.max_hourly_usd is not None:
            out["max_hourly_micros"] = str(to_micros("max_hourly_usd", self.max_hourly_usd))
        if self.monthly_usd is not None:
            out["monthly_micros"] = str(to_micros("monthly_usd", self.monthly_usd))
        return out

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> Limits:
        """Read back :meth:`to_hash` (an empty hash is "no limits")."""
        hourly = _opt_int(data.get("max_hourly_micros"))
        monthly = _opt_int(data.get("monthly_micros"))
        return cls(
            max_sessions=_opt_int(data.get("max_sessions")),
            max_hourly_usd=None if hourly is None else to_usd(hourly),
            monthly_usd=None if monthly is None else to_usd(monthly),
        )


@dataclass(frozen=True, slots=True)
class Usage:
    """What a user or tenant uses right now.

    Attributes:
        sessions: live sessions (reservations held).
        hourly_usd: USD per hour committed by those sessions (their requested GPU price
            until they run, then their pod's real ``cost_per_hour``).
        month_to_date_usd: USD recorded as spent this calendar month (UTC).
        month: that month, ``YYYY-MM`` (Redis ``TIME``).
    """

    sessions: int
    hourly_usd: float
    month_to_date_usd: float
    month: str


@dataclass(frozen=True, slots=True)
class Reservation:
    """What one session's admission reserved, until :meth:`QuotaStore.release`.

    Attributes:
        session_id: the session.
        user_id: the user it counts against (``None``: no user).
        tenant_id: the tenant it counts against (``None``: no tenant).
        hourly_usd: the USD per hour it commits.
        price_known: ``False`` when admitted without a catalog price (0 USD/h committed
            until :meth:`QuotaStore.correct`).
        admitted_at_ms: admission time (Redis ``TIME``, ms since the epoch).
        corrected_at_ms: when :meth:`QuotaStore.correct` last set the real price.
    """

    session_id: str
    user_id: str | None
    tenant_id: str | None
    hourly_usd: float
    price_known: bool
    admitted_at_ms: int
    corrected_at_ms: int | None = None

    def to_hash(self) -> dict[str, str]:
        """The Redis hash (absent user/tenant fields mean "not counted there")."""
        out = {
            "session_id": self.session_id,
            "hourly_micros": str(to_micros("hourly_usd", self.hourly_usd)),
            "price_known": "1" if self.price_known else "0",
            "admitted_ms": str(self.admitted_at_ms),
        }
        if self.user_id is not None:
            out["user_id"] = self.user_id
        if self.tenant_id is not None:
            out["tenant_id"] = self.tenant_id
        if self.corrected_at_ms is not None:
            out["corrected_ms"] = str(self.corrected_at_ms)
        return out

    @classmethod
    def from_hash(cls, data: Mapping[str, str]) -> Reservation:
        """Read back :meth:`to_hash` (or the hash the admission script wrote)."""
        return cls(
            session_id=data["session_id"],
            user_id=data.get("user_id") or None,
            tenant_id=data.get("tenant_id") or None,
            hourly_usd=to_usd(int(data.get("hourly_micros") or 0)),
            price_known=data.get("price_known", "1") == "1",
            admitted_at_ms=int(data.get("admitted_ms") or 0),
            corrected_at_ms=_opt_int(data.get("corrected_ms")),
        )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit refused an admission, with the numbers (see :class:`QuotaExceeded`)."""

    scope: Scope
    scope_id: str
    limit_name: LimitName
    usage: float
    limit: float
    requested: float
    committed_hourly_usd: float
    month: str

    def message(self) -> str:
        """A sentence naming the limit, the usage and the limit."""
        who = f"{self.scope} {self.scope_id!r}"
        if self.limit_name == "max_sessions":
            return (
                f"{who} is at its max_sessions limit: {self.usage:.0f} live sessions, "
                f"limit {self.limit:.0f}"
            )
        if self.limit_name == "max_hourly_usd":
            return (
                f"{who} would exceed max_hourly_usd: {self.usage:.2f} USD/h committed "
                f"+ {self.requested:.2f} USD/h requested > limit {self.limit:.2f} USD/h"
            )
        return (
            f"{who} would exceed monthly_usd for {self.month}: {self.usage:.2f} USD spent "
            f"+ one hour of the live sessions and the new one ({self.requested:.2f} USD) "
            f"> budget {self.limit:.2f} USD"
        )

    def error(self) -> QuotaExceeded:
        """The :class:`QuotaExceeded` to raise for this refusal."""
        return QuotaExceeded(
            self.message(),
            scope=self.scope,
            scope_id=self.scope_id,
            limit_name=self.limit_name,
            usage=self.usage,
            limit=self.limit,
            requested=self.requested,
        )


@dataclass(frozen=True, slots=True)
class Admission:
    """The answer of :meth:`QuotaStore.try_admit`: a reservation or a refusal.

    Attributes:
        reservation: what is reserved for the session (``None`` when refused).
        refusal: which limit refused (``None`` when admitted).
        already_reserved: the session already held a reservation (a retried admission);
            nothing more was reserved and ``reservation`` is the existing one.
    """

    reservation: Reservation | None
    refusal: Refusal | None = None
    already_reserved: bool = False

    @property
    def admitted(self) -> bool:
        """True when the session holds a reservation."""
        return self.reservation is not None


@dataclass(frozen=True, slots=True)
class Quote:
    """The hourly price of a request from the price cache.

    Attributes:
        hourly_usd: price × GPU count, or ``None`` when the cache has no price for the GPU.
        per_gpu_usd: the cached price of one GPU-hour (``None`` when unknown).
        refreshed_at_ms: when the provider's prices were last refreshed (``None``: never).
    """

    hourly_usd: float | None
    per_gpu_usd: float | None
    refreshed_at_ms: int | None


# --------------------------------------------------------------------------- Lua

# Calendar month from Unix seconds, UTC (Howard Hinnant's civil_from_days and its inverse),
# so the month comes from Redis TIME inside the script and every process agrees on it.
_MONTH_LUA = """
local function floordiv(a, b) return math.floor(a / b) end
local function civil_month(days)
  local z = days + 719468
  local era = floordiv(z, 146097)
  local doe = z - era * 146097
  local yoe = floordiv(doe - floordiv(doe, 1460) + floordiv(doe, 36524)
                       - floordiv(doe, 146096), 365)
  local y = yoe + era * 400
  local doy = doe - (365 * yoe + floordiv(yoe, 4) - floordiv(yoe, 100))
  local mp = floordiv(5 * doy + 2, 153)
  local m = mp + 3
  if mp >= 10 then m = mp - 9 end
  if m <= 2 then y = y + 1 end
  return y, m
end
local function month_start_days(y, m)
  if m <= 2 then y = y - 1 end
  local era = floordiv(y, 400)
  local yoe = y - era * 400
  local mp = (m + 9) % 12
  local doy = floordiv(153 * mp + 2, 5)
  local doe = yoe * 365 + floordiv(yoe, 4) - floordiv(yoe, 100) + doy
  return era * 146097 + doe - 719468
end
-- 'YYYY-MM' of a Unix second, and the Unix second its next month starts.
local function month_at(sec)
  local y, m = civil_month(floordiv(sec, 86400))
  local ny, nm = y, m + 1
  if nm > 12 then ny, nm = y + 1, 1 end
  return string.format('%04d-%02d', y, m), month_start_days(ny, nm) * 86400
end
local _t = redis.call('TIME')
local now_s = tonumber(_t[1])
local now_ms = now_s * 1000 + floordiv(tonumber(_t[2]), 1000)
local month, month_end = month_at(now_s)
local function int(n) return string.format('%d', n) end
-- Add delta to an integer hash field, never below zero (a usage hash lost to eviction or
-- a manual edit must not turn a later release into a negative, over-admitting counter).
local function add_clamped(key, field, delta)
  local v = tonumber(redis.call('HGET', key, field) or '0') + delta
  if v < 0 then v = 0 end
  redis.call('HSET', key, field, int(v))
end
"""

# Script to check a month computation from tests (ARGV[1] = Unix seconds).
_MONTH_AT = _MONTH_LUA + "local a, b = month_at(tonumber(ARGV[1])) return {a, b}"

# Reading and writing one reservation, shared by every script that touches one (and by
# the session store's end scripts, through LUA_QUOTA_RELEASE). Names start with ``qres_``
# so they cannot clash with the locals of the scripts that embed them.
_LUA_RES = r"""
-- The previous layout's key of a reservation (one hash per session), derived from the
-- bucket key's name: '<ns>:quota:resv:<k>' -> '<ns>:quota:res:<id>' (same hash tag).
local function qres_legacy(res, id)
  local base = string.match(res, '^(.*)resv:%d+')
  if base then return base .. 'res:' .. id end
  return nil
end
-- Session id's reservation: {micros, known, user, tenant, corrected, admitted}
-- (user/tenant/corrected false when absent), and the legacy key when it lives in the
-- previous layout; nil when the session holds none.
local function qres_load(res, index, id)
  local v = redis.call('HGET', res, id)
  if v then
    local f = {}
    for part in string.gmatch(v .. '\t', '([^\t]*)\t') do f[#f + 1] = part end
    local admitted = redis.call('ZSCORE', index, id)
    return {tonumber(f[1]) or 0, f[2] ~= '0',
            (f[3] or '') ~= '' and f[3] or false, (f[4] or '') ~= '' and f[4] or false,
            (f[5] or '') ~= '' and tonumber(f[5]) or false,
            tonumber(admitted or '0')}, nil
  end
  local old = qres_legacy(res, id)
  if old and redis.call('EXISTS', old) == 1 then
    local h = redis.call('HMGET', old, 'hourly_micros', 'price_known', 'user_id',
                         'tenant_id', 'corrected_ms', 'admitted_ms')
    return {tonumber(h[1] or '0'), h[2] ~= '0', h[3] or false, h[4] or false,
            h[5] and tonumber(h[5]) or false, tonumber(h[6] or '0')}, old
  end
  return nil, nil
end
local function qres_encode(r)
  local v = string.format('%d', r[1]) .. '\t' .. (r[2] and '1' or '0') .. '\t' ..
            (r[3] or '') .. '\t' .. (r[4] or '')
  if r[5] then v = v .. '\t' .. string.format('%d', r[5]) end
  return v
end
-- The reservation as the flat field list the Python side reads (Reservation.from_hash).
local function qres_fields(id, r)
  local out = {'session_id', id, 'hourly_micros', string.format('%d', r[1]),
               'price_known', r[2] and '1' or '0', 'admitted_ms', string.format('%d', r[6])}
  if r[3] then out[#out + 1] = 'user_id'; out[#out + 1] = r[3] end
  if r[4] then out[#out + 1] = 'tenant_id'; out[#out + 1] = r[4] end
  if r[5] then out[#out + 1] = 'corrected_ms'; out[#out + 1] = string.format('%d', r[5]) end
  return out
end
-- The usage hashes a reservation counts in (built from the USAGE_KEY halves).
local function qres_owners(r, prefix, suffix)
  local out = {}
  if r[3] then out[#out + 1] = prefix .. 'user:' .. r[3] .. suffix end
  if r[4] then out[#out + 1] = prefix .. 'tenant:' .. r[4] .. suffix end
  return out
end
"""

_ADMIT = (
    _MONTH_LUA
    + _LUA_RES
    + """
-- KEYS: reservation bucket, index, then per scope: limits, usage, spend prefix
-- ARGV: session id, hourly micros, price known (1/0), n scopes, then per scope: scope, id
local held = qres_load(KEYS[1], KEYS[2], ARGV[1])
if held then
  return {'already', qres_fields(ARGV[1], held)}
end
local req = tonumber(ARGV[2])
local n = tonumber(ARGV[4])
-- Check every limit of every scope first: a refusal writes nothing.
for i = 0, n - 1 do
  local scope, id = ARGV[5 + 2 * i], ARGV[6 + 2 * i]
  local lim = redis.call('HMGET', KEYS[3 + 3 * i], 'max_sessions', 'max_hourly_micros',
                         'monthly_micros')
  local use = redis.call('HMGET', KEYS[4 + 3 * i], 'sessions', 'hourly_micros')
  local sessions = tonumber(use[1] or '0')
  local hourly = tonumber(use[2] or '0')
  if lim[1] and sessions + 1 > tonumber(lim[1]) then
    return {'refused', scope, id, 'max_sessions', sessions, tonumber(lim[1]), 1, hourly, month}
  end
  if lim[2] and hourly + req > tonumber(lim[2]) then
    return {'refused', scope, id, 'max_hourly_usd', hourly, tonumber(lim[2]), req, hourly,
            month}
  end
  if lim[3] then
    local spent = tonumber(redis.call('GET', KEYS[5 + 3 * i] .. month) or '0')
    local budget = tonumber(lim[3])
    if spent >= budget or spent + hourly + req > budget then
      return {'refused', scope, id, 'monthly_usd', spent, budget, hourly + req, hourly, month}
    end
  end
end
local r = {req, ARGV[3] == '1', false, false, false, now_ms}
for i = 0, n - 1 do
  if ARGV[5 + 2 * i] == 'user' then r[3] = ARGV[6 + 2 * i] else r[4] = ARGV[6 + 2 * i] end
  redis.call('HINCRBY', KEYS[4 + 3 * i], 'sessions', 1)
  redis.call('HINCRBY', KEYS[4 + 3 * i], 'hourly_micros', int(req))
end
redis.call('HSET', KEYS[1], ARGV[1], qres_encode(r))
redis.call('ZADD', KEYS[2], int(now_ms), ARGV[1])
return {'ok', qres_fields(ARGV[1], r)}
"""
)

#: Lua function ``quota_release(reservation, index, session_id, usage_prefix, usage_suffix)``
#: giving back one session's reservation (idempotent: the receipt is deleted in the same
#: step; returns the receipt's fields, or ``false`` when there was none). Exported so the
#: session store's end transitions (``fail_spawn``, ``finish_terminate``) release in the
#: same Lua step that ends the session, in the untagged layout: no worker death can
#: separate the two. Callers pass :func:`reservation_key` (the session's *bucket* hash;
#: the session id is its field) and :func:`reservations_index_key` as KEYS, and the
#: halves of :func:`usage_key_halves` as ARGV. It also releases a reservation of the
#: previous layout (:data:`LEGACY_RESERVATION_KEY`, named after the bucket key).
#: In the tagged layout the quota keys are in the ``{quota}`` slot, not a session's, so a
#: session script must not embed this: call :meth:`QuotaStore.release` after it.
LUA_QUOTA_RELEASE: Final = (
    _LUA_RES
    + """
local function quota_release(res, index, id, prefix, suffix)
  local r, old = qres_load(res, index, id)
  if not r then return false end
  for _, key in ipairs(qres_owners(r, prefix, suffix)) do
    -- never below zero (see add_clamped)
    local n = tonumber(redis.call('HGET', key, 'sessions') or '0') - 1
    local h = tonumber(redis.call('HGET', key, 'hourly_micros') or '0') - r[1]
    if n < 0 then n = 0 end
    if h < 0 then h = 0 end
    redis.call('HSET', key, 'sessions', string.format('%d', n),
               'hourly_micros', string.format('%d', h))
  end
  if old then redis.call('DEL', old) else redis.call('HDEL', res, id) end
  redis.call('ZREM', index, id)
  return qres_fields(id, r)
end
"""
)

_RELEASE = (
    LUA_QUOTA_RELEASE
    + """
-- KEYS: reservation bucket, index  ARGV: session id, usage key prefix, usage key suffix
return quota_release(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3])
"""
)

_RELEASE_ORPHANED = (
    LUA_QUOTA_RELEASE
    + """
-- KEYS: index, then one reservation bucket per candidate
-- ARGV: session record prefix ('' = no check), usage key prefix, usage key suffix,
--       then the candidates' session ids (in KEYS order)
-- Releases each candidate whose session record does not exist (when a prefix is given:
-- the untagged layout, where a record is a key this script may read) or every
-- candidate (the caller already asked the session store which are ended or gone).
-- A candidate released meanwhile holds nothing and is not reported.
local out = {}
for i = 4, #ARGV do
  local id = ARGV[i]
  if ARGV[1] == '' or redis.call('EXISTS', ARGV[1] .. id) == 0 then
    if quota_release(KEYS[i - 2], KEYS[1], id, ARGV[2], ARGV[3]) then
      out[#out + 1] = id
    end
  end
end
return out
"""
)

_CORRECT = (
    _MONTH_LUA
    + _LUA_RES
    + """
-- KEYS: reservation bucket, index
-- ARGV: session id, new hourly micros, usage key prefix, usage key suffix
local r, old = qres_load(KEYS[1], KEYS[2], ARGV[1])
if not r then return false end
local new = tonumber(ARGV[2])
for _, key in ipairs(qres_owners(r, ARGV[3], ARGV[4])) do
  add_clamped(key, 'hourly_micros', new - r[1])
end
r[1] = new
r[2] = true
r[5] = now_ms
-- A reservation of the previous layout moves into its bucket here.
redis.call('HSET', KEYS[1], ARGV[1], qres_encode(r))
if old then redis.call('DEL', old) end
return qres_fields(ARGV[1], r)
"""
)

_RECORD_SPEND = (
    _MONTH_LUA
    + """
-- KEYS: spend prefixes  ARGV: micros, retention seconds
local out = {month}
for i = 1, #KEYS do
  local key = KEYS[i] .. month
  out[#out + 1] = redis.call('INCRBY', key, ARGV[1])
  redis.call('EXPIREAT', key, int(month_end + tonumber(ARGV[2])))
end
return out
"""
)

_USAGE = (
    _MONTH_LUA
    + """
-- KEYS: usage, spend prefix
local use = redis.call('HMGET', KEYS[1], 'sessions', 'hourly_micros')
local spent = redis.call('GET', KEYS[2] .. month) or '0'
return {tonumber(use[1] or '0'), tonumber(use[2] or '0'), tonumber(spent), month}
"""
)


def _redis_mapping(fields: dict[str, str]) -> Mapping[Any, Any]:
    # redis-py types ``mapping`` with invariant key/value unions a dict[str, str] cannot meet.
    return fields


# --------------------------------------------------------------------------- the store


class QuotaStore:
    """Limits, usage, reservations, spend and the price cache on one Redis client.

    Args:
        client: a ``decode_responses=True`` Redis client.
        namespace: the deployment whose keys it reads and writes (default: the
            ``ATLAS_NAMESPACE`` setting at each call).
    """

    def __init__(self, client: redis.Redis, *, namespace: str | None = None) -> None:
        self.client = client
        self.namespace = namespace
        self._admit = client.register_script(_ADMIT)
        self._release = client.register_script(_RELEASE)
        self._release_orphaned = client.register_script(_RELEASE_ORPHANED)
        self._correct = client.register_script(_CORRECT)
        self._record_spend = client.register_script(_RECORD_SPEND)
        self._usage = client.register_script(_USAGE)
        self._month_at = client.register_script(_MONTH_AT)

    # ------------------------------------------------------------------ limits
    def set_limits(self, scope: Scope, scope_id: str | int, limits: Limits) -> None:
        """Replace a scope's limits (a limit left ``None`` is removed: no limit)."""
        key = limits_key(check_scope(scope), check_id("id", scope_id), namespace=self.namespace)
        fields = limits.to_hash()
        # One MULTI: an admission never sees the old limits half replaced.
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if fields:
                pipe.hset(key, mapping=_redis_mapping(fields))
            pipe.execute()

    def get_limits(self, scope: Scope, scope_id: str | int) -> Limits:
        """A scope's limits (all ``None`` when none were set)."""
        key = limits_key(check_scope(scope), check_id("id", scope_id), namespace=self.namespace)
        return Limits.from_hash(cast(dict[str, str], self.client.hgetall(key)))

    # ------------------------------------------------------------------ usage
    def usage(self, scope: Scope, scope_id: str | int) -> Usage:
        """A scope's live sessions, committed USD/h and month-to-date spend (one snapshot)."""
        scope = check_scope(scope)
        ident = check_id("id", scope_id)
        sessions, hourly, spent, month = cast(
            list[Any],
            self._usage(
                keys=[
                    usage_key(scope, ident, namespace=self.namespace),
                    _spend_prefix(scope, ident, self.namespace),
                ]
            ),
        )
        return Usage(
            sessions=int(sessions),
            hourly_usd=to_usd(int(hourly)),
            month_to_date_usd=to_usd(int(spent)),
            month=str(month),
        )

    def record_spend(
        self, usd: float, *, user_id: str | int | None = None, tenant_id: str | int | None = None
    ) -> dict[Scope, float]:
        """Add ``usd`` to this month's spend of the user and/or the tenant.

        Returns each scope's month-to-date spend after the addition. The month is Redis's
        (UTC), and each month has its own key that expires :data:`SPEND_RETENTION_S` after
        the month ends, so month rollover needs no job.
        """
        micros = to_micros("usd", usd)
        scopes = self._scopes(user_id, tenant_id)
        if not scopes:
            return {}
        out = cast(
            list[Any],
            self._record_spend(
                keys=[_spend_prefix(scope, ident, self.namespace) for scope, ident in scopes],
                args=[micros, SPEND_RETENTION_S],
            ),
        )
        return {
            scope: to_usd(int(total)) for (scope, _), total in zip(scopes, out[1:], strict=True)
        }

    def month_at(self, unix_s: int) -> tuple[str, int]:
        """``(YYYY-MM, next month's first Unix second)`` as the scripts compute them."""
        month, end = cast(list[Any], self._month_at(args=[int(unix_s)]))
        return str(month), int(end)

    # ------------------------------------------------------------------ admission
    def try_admit(
        self,
        session_id: str,
        *,
        user_id: str | int | None = None,
        tenant_id: str | int | None = None,
        hourly_usd: float | None = None,
    ) -> Admission:
        """Check and reserve a session against its user's and tenant's limits atomically.

        One Lua call checks ``max_sessions``, ``max_hourly_usd`` and ``monthly_usd`` of
        the user and of the tenant (either may be ``None``) and, only if every one of
        them allows it, reserves one session and ``hourly_usd`` on both together.
        ``hourly_usd=None`` (no catalog price) admits with 0 USD/h committed and
        ``price_known=False``; the session still counts. A session that already holds a
        reservation is answered with it, unchanged (retries reserve nothing twice).
        """
        _check_session(session_id)
        micros = 0 if hourly_usd is None else to_micros("hourly_usd", hourly_usd)
        scopes = self._scopes(user_id, tenant_id)
        keys = [reservation_key(session_id, self.namespace), reservations_index_key(self.namespace)]
        args: list[Any] = [session_id, micros, "0" if hourly_usd is None else "1", len(scopes)]
        for scope, ident in scopes:
            keys += [
                limits_key(scope, ident, namespace=self.namespace),
                usage_key(scope, ident, namespace=self.namespace),
                _spend_prefix(scope, ident, self.namespace),
            ]
            args += [scope, ident]
        reply = cast(list[Any], self._admit(keys=keys, args=args))
        verdict = str(reply[0])
        if verdict == "refused":
            scope, ident, name, use, limit, requested, committed, month = reply[1:9]
            money = name != "max_sessions"
            return Admission(
                None,
                Refusal(
                    scope=cast(Scope, str(scope)),
                    scope_id=str(ident),
                    limit_name=cast(LimitName, str(name)),
                    usage=to_usd(int(use)) if money else float(use),
                    limit=to_usd(int(limit)) if money else float(limit),
                    requested=to_usd(int(requested)) if money else float(requested),
                    committed_hourly_usd=to_usd(int(committed)),
                    month=str(month),
                ),
            )
        reservation = Reservation.from_hash(flat_hash(list(reply[1])))
        if hourly_usd is None and verdict == "ok":
            # Once per process at WARNING (a missing price cache is a deployment problem,
            # not a per-spawn one); every later admission without a price at DEBUG.
            level = logging.DEBUG if _no_price_warned.is_set() else logging.WARNING
            _no_price_warned.set()
            log.log(
                level,
                "session %s admitted without a catalog price: 0 USD/h committed until its "
                "pod's real cost is known (is the atlas.quotas.refresh_prices beat task "
                "running?)",
                session_id,
            )
        return Admission(reservation, already_reserved=verdict == "already")

    def release(self, session_id: str) -> Reservation | None:
        """Give back what a session reserved; idempotent.

        Returns the reservation released, or ``None`` when the session held none (never
        admitted, or already released). The receipt is deleted in the same script that
        gives its amounts back, so no sequence of releases drives usage below zero.
        """
        _check_session(session_id)
        reply = self._release(
            keys=[
                reservation_key(session_id, self.namespace),
                reservations_index_key(self.namespace),
            ],
            args=[session_id, *usage_key_halves(self.namespace)],
        )
        return Reservation.from_hash(flat_hash(list(reply))) if reply else None

    def release_many(self, session_ids: Iterable[str]) -> list[Reservation | None]:
        """:meth:`release` of each session, pipelined (one round trip; one call each on
        a ``RedisCluster`` client, whose pipelines refuse scripts), in order.

        For callers that end sessions in batches (the reaper in the tagged layout, where
        the release is a step of its own after each session's end step). Each release
        is its own atomic, idempotent script, exactly as :meth:`release`.
        """
        ids = list(session_ids)
        for session_id in ids:
            _check_session(session_id)
        if not ids:
            return []
        if isinstance(self.client, redis.RedisCluster):
            # redis-py's cluster pipeline refuses scripts (EVALSHA): one call each.
            return [self.release(session_id) for session_id in ids]
        index = reservations_index_key(self.namespace)
        halves = usage_key_halves(self.namespace)
        with self.client.pipeline(transaction=False) as pipe:
            for session_id in ids:
                self._release(
                    keys=[reservation_key(session_id, self.namespace), index],
                    args=[session_id, *halves],
                    client=pipe,
                )
            replies = pipe.execute()
        return [Reservation.from_hash(flat_hash(list(r))) if r else None for r in replies]

    def release_orphaned(
        self,
        session_key_prefix: str | None = None,
        *,
        live_sessions: Callable[[list[str]], set[str]] | None = None,
        older_than_ms: int = 60_000,
        limit: int = 1000,
    ) -> list[str]:
        """Release reservations whose session is gone (or ended); returns their session ids.

        Sessions release their reservation when they end (in the untagged layout, in the
        very Lua step that ends them); this catches the rest: a spawn that died between
        admission and writing its record, a record lost with Redis data, and in the tagged
        layout a worker that died between a session's end and its release. Every
        reservation older than ``older_than_ms`` is looked at, oldest first, in pages of
        ``limit``; a younger one never is, so a spawn between its admission and its
        record is never touched.

        Which sessions are still live is asked one of two ways:

        * ``live_sessions(ids)`` (either layout; required in the tagged one): the ids
          among ``ids`` whose session record exists and has not ended (not terminated,
          not failed) — ``SessionStore.live_ids``. Every other candidate is released.
        * ``session_key_prefix`` (untagged layout only): the release script itself
          checks that the session record (``prefix + id``) exists, in the same step. A
          record that exists is never ended with its reservation held there, because
          ends release in the same step.

        Either way each release is one atomic, idempotent step per candidate, so this
        races safely with the session's own release (whichever comes second finds
        nothing and the id is not reported).

        Args:
            session_key_prefix: the session record key without its id
                (``atlas:session:``), for the in-script check.
            live_sessions: which of a list of session ids are live (see above).
            older_than_ms: minimum age of a reservation (ms, Redis time).
            limit: reservations looked at per page (one ``live_sessions`` call and one
                release script per page).

        Raises:
            ValidationError: neither way was given, or only ``session_key_prefix`` in the
                tagged layout (a script cannot read a session's slot from ``{quota}``).
        """
        if live_sessions is None:
            if session_key_prefix is None:
                raise validation_error("live_sessions", "give live_sessions or session_key_prefix")
            if quota_keyspace(self.namespace).tagged:
                raise validation_error(
                    "live_sessions",
                    "required in the tagged key layout (ATLAS_REDIS_SHARDS): the quota "
                    "script cannot read session records in other slots",
                )
        index = reservations_index_key(self.namespace)
        halves = usage_key_halves(self.namespace)
        now_s, now_us = self.client.time()
        cutoff = int(now_s) * 1000 + int(now_us) // 1000 - int(older_than_ms)
        released: list[str] = []
        offset = 0
        # Every reservation older than the cutoff, a page of ``limit`` at a time: with
        # more live sessions than a page, the orphans are not only among the oldest.
        # Released ones leave the index, so the next page starts that many earlier.
        while True:
            page = cast(
                list[str],
                self.client.zrangebyscore(index, "-inf", cutoff, start=offset, num=int(limit)),
            )
            if not page:
                break
            ids = page
            if live_sessions is not None:
                live = live_sessions(list(page))
                ids = [i for i in page if i not in live]
                check = ""
            else:
                check = session_key_prefix or ""
            freed: list[str] = []
            if ids:
                reply = self._release_orphaned(
                    keys=[index, *(reservation_key(i, self.namespace) for i in ids)],
                    args=[check, *halves, *ids],
                )
                freed = [str(x) for x in cast(list[Any], reply)]
            released += freed
            if len(page) < limit:
                break
            offset += len(page) - len(freed)
        return released

    def correct(self, session_id: str, real_hourly_usd: float) -> Reservation | None:
        """Set a live reservation's USD/h to the pod's real ``cost_per_hour``.

        Limits are not checked again: the pod already runs, and a price above the estimate
        shows up as usage above the limit, which refuses the next admission. ``None`` when
        the session holds no reservation (released already: nothing is re-reserved).
        """
        _check_session(session_id)
        micros = to_micros("real_hourly_usd", real_hourly_usd)
        reply = self._correct(
            keys=[
                reservation_key(session_id, self.namespace),
                reservations_index_key(self.namespace),
            ],
            args=[session_id, micros, *usage_key_halves(self.namespace)],
        )
        return Reservation.from_hash(flat_hash(list(reply))) if reply else None

    def reservation(self, session_id: str) -> Reservation | None:
        """The session's live reservation, or ``None``."""
        found = self.reservations_of([session_id])
        return found[0] if found else None

    def reservations(self, *, limit: int = 1000) -> list[Reservation]:
        """Live reservations, oldest first (at most ``limit``)."""
        ids = cast(
            list[str], self.client.zrange(reservations_index_key(self.namespace), 0, limit - 1)
        )
        return self.reservations_of(ids)

    def reservations_of(self, session_ids: list[str]) -> list[Reservation]:
        """The live reservations of ``session_ids``, in their order (sessions holding
        none are left out). Two pipelined round trips, plus one for reservations still
        in the previous layout."""
        if not session_ids:
            return []
        index = reservations_index_key(self.namespace)
        with self.client.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hget(reservation_key(session_id, self.namespace), session_id)
                pipe.zscore(index, session_id)
            rows = pipe.execute()
        out: dict[str, Reservation] = {}
        legacy: list[str] = []
        for i, session_id in enumerate(session_ids):
            value, score = rows[2 * i], rows[2 * i + 1]
            if value is not None:
                out[session_id] = decode_reservation(session_id, str(value), int(score or 0))
            else:
                legacy.append(session_id)
        if legacy:
            with self.client.pipeline(transaction=False) as pipe:
                for session_id in legacy:
                    pipe.hgetall(legacy_reservation_key(session_id, self.namespace))
                for session_id, row in zip(legacy, pipe.execute(), strict=True):
                    if row:
                        out[session_id] = Reservation.from_hash(cast(dict[str, str], row))
        return [out[i] for i in session_ids if i in out]

    # ------------------------------------------------------------------ prices
    def refresh_prices(self, provider: str, gpu_types: Iterable[GpuType]) -> int:
        """Replace a provider's cached prices with its catalog; returns the prices stored.

        Each GPU is stored under its canonical name and the provider's id (lower-cased),
        on-demand as ``{gpu}`` and spot as ``{gpu}:spot``. Where several catalog entries
        share a name (secure and community cloud), the highest price is kept: admission
        errs towards refusing, and :meth:`correct` sets the real price once the pod runs.
        An empty catalog leaves the cache as it is (a failed listing must not erase it).
        """
        prices: dict[str, int] = {}
        for gpu in gpu_types:
            for name in {gpu.canonical, gpu.id} - {None, ""}:
                base = str(name).lower()
                for field, usd in (
                    (base, gpu.lowest_price_per_hour),
                    (f"{base}:spot", gpu.spot_price_per_hour),
                ):
                    if usd is None or not math.isfinite(usd) or not 0 <= usd <= MAX_USD:
                        continue
                    prices[field] = max(prices.get(field, 0), round(usd * MICROS))
        if not prices:
            log.warning("price refresh for %s got no prices; keeping the cached ones", provider)
            return 0
        key = prices_key(provider, namespace=self.namespace)
        now_s, now_us = self.client.time()
        fields = {k: str(v) for k, v in prices.items()}
        fields["@refreshed_ms"] = str(int(now_s) * 1000 + int(now_us) // 1000)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=_redis_mapping(fields))
            pipe.execute()
        return len(prices)

    def quote(self, provider: str, gpu: str, gpu_count: int = 1, *, spot: bool = False) -> Quote:
        """The cached hourly price of ``gpu_count`` × ``gpu`` on ``provider``.

        An unknown GPU (or a cache never refreshed) quotes ``hourly_usd=None``; see
        :meth:`try_admit` for what admission does with it.
        """
        count = _check_count("gpu_count", gpu_count)
        field = f"{gpu.lower()}:spot" if spot else gpu.lower()
        price, refreshed = cast(
            list[str | None],
            self.client.hmget(
                prices_key(provider, namespace=self.namespace), [field, "@refreshed_ms"]
            ),
        )
        per_gpu = to_usd(int(price)) if price is not None else None
        return Quote(
            hourly_usd=None if price is None else to_usd(int(price) * count),
            per_gpu_usd=per_gpu,
            refreshed_at_ms=_opt_int(refreshed),
        )

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _scopes(user_id: str | int | None, tenant_id: str | int | None) -> list[tuple[Scope, str]]:
        scopes: list[tuple[Scope, str]] = []
        if user_id is not None:
            scopes.append(("user", check_id("user_id", user_id)))
        if tenant_id is not None:
            scopes.append(("tenant", check_id("tenant_id", tenant_id)))
        return scopes


__all__ = [
    "LEGACY_RESERVATION_KEY",
    "LIMITS_KEY",
    "LUA_QUOTA_RELEASE",
    "MAX_USD",
    "MICROS",
    "PRICES_KEY",
    "RESERVATIONS_INDEX_KEY",
    "RESERVATION_BUCKETS",
    "RESERVATION_KEY",
    "QUOTA_GROUP",
    "SCOPES",
    "SPEND_KEY",
    "SPEND_RETENTION_S",
    "USAGE_KEY",
    "Admission",
    "LimitName",
    "Limits",
    "QuotaStore",
    "Quote",
    "Refusal",
    "Reservation",
    "Scope",
    "Usage",
    "check_id",
    "check_scope",
    "decode_reservation",
    "encode_reservation",
    "legacy_reservation_key",
    "limits_key",
    "prices_key",
    "quota_keyspace",
    "reservation_bucket",
    "reservations_index_key",
    "reservation_key",
    "usage_key_halves",
    "spend_key",
    "to_micros",
    "to_usd",
    "usage_key",
]
