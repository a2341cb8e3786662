"""One pooled Redis client per URL for the whole process (web node, worker, beat)."""

from __future__ import annotations

import threading

import redis

from atlas_tasks.config import get_settings

_clients: dict[str, redis.Redis] = {}
_lock = threading.Lock()


def get_redis(url: str | None = None) -> redis.Redis:
    """A ``decode_responses=True`` client for ``url`` (default ``ATLAS_REDIS_URL``).

    Clients are cached per URL and share a connection pool, so ``touch()`` costs one
    round trip on an already-open connection.
    """
    settings = get_settings()
    url = url or settings.redis_url
    client = _clients.get(url)
    if client is None:
        with _lock:
            client = _clients.get(url)
            if client is None:
                client = redis.Redis.from_url(
                    url,
                    decode_responses=True,
                    health_check_interval=30,
                    socket_keepalive=True,
                    retry_on_timeout=True,
                    max_connections=settings.redis_max_connections,
                )
                _clients[url] = client
    return client


def reset_redis_clients() -> None:
    """Close and forget cached clients (after fork, in tests, when the URL changes)."""
    with _lock:
        for client in _clients.values():
            try:
                client.close()
            except redis.RedisError:
                pass
        _clients.clear()
