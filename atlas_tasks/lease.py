"""One lease/fence primitive for every Redis lock in atlas_tasks.

A :class:`Lease` is a Redis string key whose value is the holder's **owner token**. It is
taken with ``SET NX PX`` and renewed or released only by the owner, atomically (a Lua
compare-and-act), so a holder that outlived its lease can never extend or delete the lock
of whoever took it next. The reaper's sweep lock, the spawn lease, the terminate fence, the
job poll lease, the Fly logs streamer lock and the Fly token single-flight are all this.

Scripts that must take or check a lease *together with* other keys (the spawn lease is
taken in the same script that checks the session's status) embed :data:`LUA_ACQUIRE`,
:data:`LUA_RENEW` and :data:`LUA_RELEASE` as Lua functions instead of re-writing them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from types import TracebackType
from typing import Any

import redis

log = logging.getLogger(__name__)

#: Lua functions for scripts that handle a lease along with other keys. Each takes the
#: lease key, the owner token and (acquire, renew) a TTL in ms; each returns 1 or 0.
LUA_LEASE_FUNCTIONS = """
local function lease_acquire(key, owner, ttl_ms)
  if redis.call('SET', key, owner, 'NX', 'PX', tonumber(ttl_ms)) then return 1 end
  return 0
end
local function lease_renew(key, owner, ttl_ms)
  if redis.call('GET', key) == owner then
    return redis.call('PEXPIRE', key, tonumber(ttl_ms))
  end
  return 0
end
local function lease_release(key, owner)
  if redis.call('GET', key) == owner then return redis.call('DEL', key) end
  return 0
end
"""

#: KEYS[1] lease; ARGV[1] owner, ARGV[2] ttl ms. 1 when the owner still held it.
_RENEW_SCRIPT = LUA_LEASE_FUNCTIONS + "return lease_renew(KEYS[1], ARGV[1], ARGV[2])"
#: KEYS[1] lease; ARGV[1] owner. 1 when the owner held it and it is now gone.
_RELEASE_SCRIPT = LUA_LEASE_FUNCTIONS + "return lease_release(KEYS[1], ARGV[1])"


def new_owner_token(prefix: str = "") -> str:
    """A fresh owner token; ``prefix`` (e.g. a worker name) helps operators reading Redis."""
    token = uuid.uuid4().hex
    return f"{prefix}:{token}" if prefix else token


class Lease:
    """An owner-token lease on one Redis key.

    Args:
        client: the Redis connection (``decode_responses=True``).
        key: the lease's Redis key.
        ttl_ms: how long the lease lives without a renewal.
        owner: the owner token; a fresh random one when omitted. Pass the same token to
            act on a lease acquired elsewhere (e.g. inside a Lua script).

    Usable as a context manager: ``with Lease(r, key, 5000) as held:`` acquires on entry
    (``held`` is the acquire result) and releases on exit if it was acquired.
    """

    __slots__ = ("client", "key", "ttl_ms", "owner", "_held")

    def __init__(
        self, client: redis.Redis, key: str, ttl_ms: int, *, owner: str | None = None
    ) -> None:
        if ttl_ms <= 0:
            raise ValueError("ttl_ms must be positive")
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_ms)
        self.owner = owner or new_owner_token()
        self._held = False

    def __repr__(self) -> str:
        return f"Lease(key={self.key!r}, ttl_ms={self.ttl_ms}, owner={self.owner!r})"

    def acquire(self) -> bool:
        """Take the lease if nobody holds it (``SET NX PX``). True when taken."""
        self._held = bool(self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))
        return self._held

    def renew(self, ttl_ms: int | None = None) -> bool:
        """Extend the lease to ``ttl_ms`` (default: the lease's TTL) if this owner holds it.

        False when the lease expired or someone else holds it: the caller has lost it.
        """
        ttl = self.ttl_ms if ttl_ms is None else int(ttl_ms)
        return bool(self.client.eval(_RENEW_SCRIPT, 1, self.key, self.owner, ttl))

    def release(self) -> bool:
        """Delete the lease if this owner still holds it; never touches another's lease."""
        self._held = False
        return bool(self.client.eval(_RELEASE_SCRIPT, 1, self.key, self.owner))

    def holder(self) -> str | None:
        """The owner token of whoever holds the lease now, or ``None``."""
        value: Any = self.client.get(self.key)
        return None if value is None else str(value)

    def held(self) -> bool:
        """True while this owner holds the lease (one ``GET``)."""
        return self.holder() == self.owner

    def keep_alive(self, every_ms: int | None = None) -> LeaseKeeper:
        """A context manager renewing this lease every ``every_ms`` (default a third of the
        TTL) from a daemon thread until exit or until the lease is lost."""
        return LeaseKeeper(self, every_ms or max(1, self.ttl_ms // 3))

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._held:
            try:
                self.release()
            except redis.RedisError:
                # The lease expires on its own; an exception here would hide the real one.
                log.debug("lease %s: release failed", self.key, exc_info=True)


class LeaseKeeper:
    """Renews a :class:`Lease` from a daemon thread while a block of work runs.

    Stops at exit or as soon as a renewal reports the lease lost (:attr:`lost` is then
    True). Redis errors are logged and retried at the next tick: a lease that cannot be
    renewed simply expires, which is the safe outcome.
    """

    def __init__(self, lease: Lease, every_ms: int) -> None:
        self.lease = lease
        self.every_s = every_ms / 1000
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"atlas-lease-{lease.key}"
        )

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                if not self.lease.renew():
                    self.lost = True
                    return
            except redis.RedisError:
                log.debug("lease %s: renewal failed", self.lease.key, exc_info=True)

    def __enter__(self) -> LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
