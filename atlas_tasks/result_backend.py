"""The Redis result backend of atlas_tasks: Celery's, without the subscribe-on-enqueue.

Celery's Redis backend subscribes to a task's result channel the moment the task is sent
(``on_task_call``), so every enqueue from a web process or from a worker opens (and keeps,
until the ``AsyncResult`` is garbage-collected) a pub/sub subscription, even though atlas
callers never wait on Celery results: sessions are followed through the event streams.
Worse, the unsubscribe runs in ``AsyncResult.__del__`` and retries for about 20 s when
Redis is unreachable, stalling whatever thread the garbage collector happened to run on
(and, run from inside ``compile()``, it has crashed a CPython 3.11 interpreter outright).
So here nothing subscribes on send, and forgetting a result never blocks: the unsubscribe
is tried once, and a broken connection is left to the next reconnect, which subscribes
only to the results still waited for.

Results are still stored exactly as before, and ``AsyncResult.get()`` still works: it
subscribes when called and then reads the stored result, so nothing published earlier is
missed.
"""

from __future__ import annotations

from typing import Any

from celery.backends.redis import RedisBackend, ResultConsumer, SentinelBackend
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

#: URL schemes served by :class:`AtlasRedisBackend` (any other backend is Celery's own).
ATLAS_SCHEMES = ("redis://", "rediss://")


class AtlasResultConsumer(ResultConsumer):  # type: ignore[misc]  # untyped base
    """Celery's Redis result consumer whose cancel never retries or raises."""

    def cancel_for(self, task_id: str) -> None:
        """Stop waiting for ``task_id``: one unsubscribe attempt, errors ignored."""
        key = self._get_key_for_task(task_id)
        self.subscribed_to.discard(key)
        if self._pubsub is None:
            return
        try:
            self._pubsub.unsubscribe(key)
        except (RedisConnectionError, RedisTimeoutError, OSError):
            # The reconnect in drain_events subscribes to ``subscribed_to`` only.
            pass


class AtlasRedisBackend(RedisBackend):  # type: ignore[misc]  # untyped base
    """Celery's Redis result backend that subscribes only when someone waits."""

    ResultConsumer = AtlasResultConsumer

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Do not subscribe on send: ``AsyncResult.get()`` subscribes on demand."""


def uses_atlas_backend(url: str | None) -> bool:
    """Whether ``result_backend = url`` is served by :class:`AtlasRedisBackend`: plain
    ``redis://``/``rediss://`` URLs are. The app picks the class in code
    (``AtlasCelery._get_backend``) so the configured URL stays an ordinary URL, which
    ``celery inspect conf`` and Flower can parse (a ``module:Class+redis://`` URL made
    them fail with "Port could not be cast to integer")."""
    return bool(url) and str(url).startswith(ATLAS_SCHEMES)


class AtlasSentinelBackend(SentinelBackend):  # type: ignore[misc]  # untyped base
    """Celery's Redis Sentinel result backend (``sentinel://...;sentinel://...``, what a
    ``redis+sentinel://`` ``ATLAS_REDIS_URL`` derives) with the same two changes as
    :class:`AtlasRedisBackend`: no subscription on send, a cancel that never blocks."""

    ResultConsumer = AtlasResultConsumer

    def on_task_call(self, producer: Any, task_id: str) -> None:
        """Do not subscribe on send: ``AsyncResult.get()`` subscribes on demand."""


def atlas_backend_class(url: str | None) -> type[RedisBackend] | None:
    """The atlas result backend class serving ``result_backend = url``:
    :class:`AtlasRedisBackend` for plain Redis URLs, :class:`AtlasSentinelBackend` for
    ``sentinel://`` ones, None for anything else (Celery's own choice stands)."""
    if uses_atlas_backend(url):
        return AtlasRedisBackend
    if url and str(url).lower().startswith("sentinel://"):
        return AtlasSentinelBackend
    return None
