"""The explicit dependencies of the Celery-free services.

Every ``service.py`` (sessions, jobs, fly) takes a :class:`Dependencies` instead of reading
Redis, settings, providers, the clock or the event publisher from module globals, so the
core can be unit-tested with fakeredis (or a test redis-server) and a fake provider, with
no worker and no beat. :meth:`Dependencies.default` is the one place that reads the
process-wide globals; the thin Celery tasks and the caller clients use it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from redis import Redis

if TYPE_CHECKING:
    from atlas_tasks.config import AtlasSettings
    from atlas_tasks.providers.base import Provider


class ProviderFactory(Protocol):
    """Builds (or reuses) the provider client for a provider name and per-call key."""

    def __call__(
        self, name: str, *, api_key: str | None = None, base_url: str | None = None
    ) -> Provider: ...


class EventPublisher(Protocol):
    """Records and broadcasts one event; returns its stream id or ``None`` (best effort)."""

    def __call__(
        self,
        topic_id: str,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        topic: str = "compute",
    ) -> str | None: ...


def _default_providers(settings: AtlasSettings) -> ProviderFactory:
    def build(name: str, *, api_key: str | None = None, base_url: str | None = None) -> Provider:
        from atlas_tasks.providers import get_provider

        return get_provider(name, api_key=api_key, base_url=base_url, settings=settings)

    return build


def _default_publisher(client: Redis, namespace: str) -> EventPublisher:
    def publish(
        topic_id: str, type: str, data: dict[str, Any] | None = None, *, topic: str = "compute"
    ) -> str | None:
        from atlas_tasks import events

        return events.publish(topic_id, type, data, topic=topic, client=client, namespace=namespace)

    return publish


@dataclass(frozen=True)
class Dependencies:
    """What a service needs from the outside world.

    Attributes:
        redis: a ``decode_responses=True`` client of the registry's Redis.
        settings: the settings in force.
        providers: builds provider clients (tests pass a factory returning a fake).
        publish: records and broadcasts events (tests may collect them instead).
        clock: wall-clock seconds (``time.time``); Redis-side logic uses Redis ``TIME``.
        monotonic: monotonic seconds for local waits and deadlines.
        sleep: how the service waits (tests pass a no-op or a fake clock's advance).
    """

    redis: Redis
    settings: AtlasSettings
    providers: ProviderFactory
    publish: EventPublisher
    clock: Callable[[], float] = field(default=time.time)
    monotonic: Callable[[], float] = field(default=time.monotonic)
    sleep: Callable[[float], None] = field(default=time.sleep)

    @classmethod
    def default(cls, settings: AtlasSettings | None = None) -> Dependencies:
        """The process-wide dependencies: ``ATLAS_*`` settings, the cached Redis client of
        ``ATLAS_REDIS_URL``, the provider registry and :func:`atlas_tasks.events.publish`."""
        from atlas_tasks.config import get_settings
        from atlas_tasks.redis_conn import get_redis

        settings = settings or get_settings()
        client = get_redis(settings.redis_url)
        return cls(
            redis=client,
            settings=settings,
            providers=_default_providers(settings),
            publish=_default_publisher(client, settings.namespace),
        )

    @classmethod
    def from_client(
        cls,
        client: Redis,
        *,
        settings: AtlasSettings | None = None,
        providers: ProviderFactory | None = None,
        publish: EventPublisher | None = None,
        **overrides: Any,
    ) -> Dependencies:
        """Dependencies around an explicit Redis client, for unit tests and embedding:
        the provider factory and publisher default to the real ones bound to ``client``."""
        from atlas_tasks.config import get_settings

        settings = settings or get_settings()
        deps = cls(
            redis=client,
            settings=settings,
            providers=providers or _default_providers(settings),
            publish=publish or _default_publisher(client, settings.namespace),
        )
        return replace(deps, **overrides) if overrides else deps
