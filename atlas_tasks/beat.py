"""The beat scheduler of atlas_tasks: redbeat that survives its Redis going away.

:class:`AtlasRedBeatScheduler` is what ``beat_scheduler`` names (see
:mod:`atlas_tasks.celery_app`). redbeat keeps the schedule and a single-beat lock in
Redis, but its ``tick`` lets every Redis problem escape, which ends the beat process:

* a Redis restarted **without persistence** has forgotten the lock, so the next lock
  extension raises ``LockNotOwnedError``, and beat exits with nothing to restart it;
* an outage longer than the retries of one command raises ``ConnectionError``.

Here a tick that cannot reach Redis logs a warning and tries again shortly, and a lost
lock is re-taken without blocking when it is free (re-installing the schedule entries,
which a wiped Redis has lost as well). When another beat holds it meanwhile, this one
stays a standby and keeps trying: the single-beat guarantee is unchanged, only
exiting is gone.

Beat also stays quiet: "Sending due task" is logged at INFO once per entry after the lock
is (re)taken and at DEBUG afterwards (the reaper is due every second), and beat sends
no ``task-sent`` events, so Flower's task list is not filled with sweeps.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from redbeat.schedulers import (
    LUA_EXTEND_TO_SCRIPT,
    REDBEAT_SENTINEL_KEY,
    RedBeatScheduler,
    get_redis,
)
from redis.exceptions import LockError, RedisError
from redis.sentinel import Sentinel

log = logging.getLogger("celery.beat")

#: Seconds between attempts while Redis is unreachable.
REDIS_RETRY_S = 1.0


def pin_sentinel_client(app: Celery) -> None:
    """With a ``redis-sentinel://`` ``redbeat_redis_url``, build redbeat's client once.

    redbeat's ``get_redis`` calls ``Sentinel.master_for`` on *every* call when it manages
    a Sentinel, so each of its several calls per tick made a new connection pool and a
    new connection to the master (about 3 a second). The first client is kept instead:
    a Sentinel-managed client asks the sentinels for the master on every reconnect, so it
    follows a failover by itself. Without a Sentinel this does nothing.
    """
    if not str(app.conf.get("redbeat_redis_url") or "").startswith("redis-sentinel"):
        return
    try:
        get_redis(app)  # builds the Sentinel and the first master client
    except RedisError:
        return  # no sentinel answered yet: redbeat keeps its per-call clients
    if isinstance(getattr(app, REDBEAT_SENTINEL_KEY, None), Sentinel):
        # Without the Sentinel attribute, get_redis returns the client it already built.
        delattr(app, REDBEAT_SENTINEL_KEY)


class AtlasRedBeatScheduler(RedBeatScheduler):  # type: ignore[misc]  # untyped base
    """redbeat's scheduler that waits out Redis outages and re-takes a lost lock."""

    #: The redis-py lock while held (set by redbeat's ``beat_init`` handler, or here).
    lock: Any = None

    def __init__(self, app: Celery, **kwargs: Any) -> None:
        # Beat only sends scheduled maintenance tasks, the sweep every second among them:
        # their task-sent events would make Flower list every sweep as a task.
        app.conf.task_send_sent_event = False
        self._announced: set[str] = set()
        self._had_lock = True  # only the first failed extension of a tenure is logged
        pin_sentinel_client(app)
        super().__init__(app, **kwargs)

    def tick(self, min: Any = min, **kwargs: Any) -> float:
        """Hold the lock, then send what is due; never raise on a Redis problem."""
        try:
            if self.lock_key and not self._hold_lock():
                return float(self.max_interval)
            remaining: list[float] = []
            try:
                for entry in self.schedule.values():
                    next_time_to_run = self.maybe_due(entry, **self._maybe_due_kwargs)
                    if next_time_to_run:
                        remaining.append(next_time_to_run)
            except RuntimeError:
                log.debug("beat: RuntimeError", exc_info=True)
            return float(min([*remaining, self.max_interval]))
        except RedisError as exc:
            log.warning("beat: Redis unavailable (%s); retrying in %.1fs", exc, REDIS_RETRY_S)
            return REDIS_RETRY_S

    def _hold_lock(self) -> bool:
        """Extend the lock; re-take it when it was lost. False while another beat has it."""
        lock: Any = self.lock
        if lock is not None:
            try:
                lock.extend(int(self.lock_timeout))
                return True
            except LockError:
                # Redis restarted without persistence, or an outage outlasted the lock.
                if self._had_lock:
                    log.warning("beat: lost the lock %s; taking it again when free", self.lock_key)
                self._had_lock = False
        else:
            # beat_init's blocking acquire failed (Redis was down when beat started).
            lock = self._new_lock()
            self.lock = lock
        if not lock.acquire(blocking=False):
            return False  # another beat is active: stay a standby
        self._had_lock = True
        log.warning("beat: Acquired lock again (%s)", self.lock_key)
        # A Redis that lost the lock lost the schedule entries too: install them again.
        self.setup_schedule()
        self._announced.clear()
        return True

    def _new_lock(self) -> Any:
        client = get_redis(self.app)
        lock = client.lock(self.lock_key, timeout=self.lock_timeout, sleep=self.max_interval)
        # redbeat's extend script sets the TTL instead of adding to it; keep its semantics.
        lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
        return lock

    def maybe_due(self, entry: Any, **kwargs: Any) -> float:
        """Send ``entry`` if due (logging it at INFO only once per lock tenure)."""
        is_due, next_time_to_run = entry.is_due()
        if is_due:
            level = logging.DEBUG if entry.name in self._announced else logging.INFO
            self._announced.add(entry.name)
            log.log(level, "Scheduler: Sending due task %s (%s)", entry.name, entry.task)
            try:
                self.apply_async(entry, **kwargs)
            except RedisError:
                raise
            except Exception as exc:
                log.exception("Scheduler: Message Error: %s", exc)
        return float(next_time_to_run)

    def close(self) -> None:
        """Release the lock if still held; a Redis that is gone cannot stop shutdown."""
        try:
            super().close()
        except RedisError as exc:
            log.warning("beat: could not release the lock (%s)", exc)
            self.lock = None
