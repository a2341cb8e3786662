"""One pooled Redis client per URL for the whole process (web node, worker, beat), and
:func:`redis_errors`, the one place where caller-facing Redis failures become
:class:`~atlas_tasks.errors.TransportError`.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import redis

from atlas_tasks.config import get_settings
from atlas_tasks.errors import TransportError

_P = ParamSpec("_P")
_R = TypeVar("_R")

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


def redacted_url(url: str) -> str:
    """``url`` without its password (``redis://:***@host:6379/0``), for messages and logs."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        user = parts.username or ""
        host = parts.hostname or ""
        if parts.port is not None:
            host = f"{host}:{parts.port}"
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:  # an unparsable URL: show nothing of it rather than a secret
        return "<unparsable redis url>"


@contextmanager
def redis_errors(what: str, url: str | None = None) -> Iterator[None]:
    """Turn any ``redis.RedisError`` raised inside into a :class:`TransportError`.

    The caller API promises that every failure is an ``AtlasError``; Redis being down,
    refusing a connection, timing out or reloading its AOF (``BusyLoadingError``) must
    not reach a web view as a raw ``redis.exceptions`` traceback. The message names Redis,
    the operation and the URL (password removed); the original is chained as ``raw``.

    Args:
        what: the operation, e.g. ``"touch"``.
        url: the Redis URL used (default ``ATLAS_REDIS_URL``).
    """
    try:
        yield
    except redis.RedisError as exc:
        raise transport_error(what, exc, url) from exc


def transport_error(what: str, exc: redis.RedisError, url: str | None = None) -> TransportError:
    """The :class:`TransportError` for a Redis failure during ``what`` (see
    :func:`redis_errors`)."""
    where = redacted_url(url or get_settings().redis_url)
    if isinstance(exc, redis.BusyLoadingError):
        detail = "Redis is loading its dataset into memory (restarting); retry shortly"
    else:
        detail = f"{type(exc).__name__}: {exc}"
    return TransportError(f"{what}: Redis at {where} failed: {detail}", raw=exc)


def wrap_redis_errors(what: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Decorator form of :func:`redis_errors` for caller-facing functions (plain, coroutine,
    generator and async generator functions: a generator's Redis errors surface while it is
    iterated, so the wrapper wraps the iteration, not just the call)."""
    def decorate(func: Callable[_P, _R]) -> Callable[_P, _R]:
        if inspect.isasyncgenfunction(func):
            @functools.wraps(func)
            async def agen_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with redis_errors(what, cast(str | None, kwargs.get("redis_url"))):
                    async for item in cast(Any, func)(*args, **kwargs):
                        yield item
            return cast(Callable[_P, _R], agen_wrapper)
        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def coro_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                try:
                    return await cast(Any, func)(*args, **kwargs)
                except redis.RedisError as exc:
                    raise transport_error(what, exc) from exc
            return cast(Callable[_P, _R], coro_wrapper)
        if inspect.isgeneratorfunction(func):
            @functools.wraps(func)
            def gen_wrapper(*args: _P.args, **kwargs: _P.kwargs) -> Any:
                with redis_errors(what, cast(str | None, kwargs.get("redis_url"))):
                    return (yield from cast(Any, func)(*args, **kwargs))
            return cast(Callable[_P, _R], gen_wrapper)

        @functools.wraps(func)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            # A bare try, not the context manager: touch() is a hot path.
            try:
                return func(*args, **kwargs)
            except redis.RedisError as exc:
                raise transport_error(what, exc) from exc
        return wrapper
    return decorate
