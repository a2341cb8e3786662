"""One pooled Redis client per URL for the whole process (web node, worker, beat), and
:func:`redis_errors`, the one place where caller-facing Redis failures become
:class:`~atlas_tasks.errors.TransportError`.

``ATLAS_REDIS_URL`` is either a plain ``redis://``/``rediss://``/``unix://`` URL or a
Redis Sentinel URL, ``redis+sentinel://[[user]:password@]host:port[,host:port...]/
master_name[/db]`` (:func:`parse_sentinel_url`). Every client of the registry and the
events is built by :func:`client_for_url` (sync) or :func:`async_client_for_url`
(asyncio), which ask the sentinels for the current master, so a promoted replica is
found again on reconnect after a failover.
"""

from __future__ import annotations

import functools
import inspect
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar, cast
from urllib.parse import unquote

import redis
import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.sentinel import Sentinel

from atlas_tasks.config import get_settings
from atlas_tasks.errors import TransportError, ValidationError

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
                client = client_for_url(
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
    """``url`` without its password (``redis://:***@host:6379/0``), for messages and logs.

    Also handles the multi-host forms: ``redis+sentinel://:***@h1:26379,h2:26379/mymaster``
    and kombu's ``;``-joined ``sentinel://:***@h1:26379;sentinel://:***@h2:26379``.
    """
    return ";".join(_redact_one(part) for part in url.split(";"))


def _redact_one(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep:  # not a URL at all: it could be anything, a bare secret included
        return url if "@" not in url else "<unparsable redis url>"
    # The last "@" ends the credentials, even when an unencoded "/" or "@" is part of the
    # password (an "@" in the path would hide more than needed: the safe direction).
    userinfo, at, after = rest.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.split(":", 1)[0]
    return f"{scheme}://{user}:***@{after}"


# ---------------------------------------------------------------- Redis Sentinel
#: URL schemes of a Sentinel-managed Redis (see :func:`parse_sentinel_url`).
SENTINEL_SCHEMES = ("redis+sentinel://",)
#: Port of a sentinel given without one.
DEFAULT_SENTINEL_PORT = 26379
#: Timeouts (s) of the connections to the sentinels themselves: a dead sentinel must not
#: stall master discovery, the next one in the list is asked instead.
SENTINEL_SOCKET_TIMEOUT_S = 1.0
_FIELD = "ATLAS_REDIS_URL"


@dataclass(frozen=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL.

    Attributes:
        sentinels: ``(host, port)`` of every sentinel, in the order given.
        master_name: the monitored master's name (``sentinel monitor <name> ...``).
        db: database number on the master.
        username, password: credentials of the Redis master/replicas (not of the
            sentinels, which are asked without authentication). Never in the repr.
    """

    sentinels: tuple[tuple[str, int], ...]
    master_name: str
    db: int = 0
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of the master connections (db and credentials)."""
        kwargs: dict[str, Any] = {"db": self.db}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        return kwargs


def is_sentinel_url(url: str | None) -> bool:
    """Whether ``url`` names a Sentinel-managed Redis (``redis+sentinel://...``)."""
    return bool(url) and str(url).lower().startswith(SENTINEL_SCHEMES)


def _bad(detail: str) -> ValidationError:
    # The message never repeats the URL: it may hold a password.
    return ValidationError(
        f"{_FIELD}: {detail}; expected "
        "redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db]",
        field=_FIELD,
    )


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``redis+sentinel://[[user]:password@]host:port[,host:port...]/master_name[/db]``.

    Raises:
        ValidationError: (field ``ATLAS_REDIS_URL``) a malformed URL; the message says
            what is wrong without echoing the URL (it may contain a password).
    """
    if not is_sentinel_url(url):
        raise _bad("not a redis+sentinel:// URL")
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise _bad("query strings and fragments are not supported")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if username and password is None:  # "user@" alone: redis-py would send no AUTH
            raise _bad("credentials need a password (':password@' or 'user:password@')")
    sentinels: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            raise _bad("empty sentinel address")
        if item.startswith("["):  # [ipv6]:port
            host, bracket, port_text = item[1:].partition("]")
            if not bracket or (port_text and not port_text.startswith(":")):
                raise _bad("malformed IPv6 sentinel address")
            port_text = port_text[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise _bad("a sentinel address has no host")
        try:
            port = int(port_text) if port_text else DEFAULT_SENTINEL_PORT
        except ValueError:
            raise _bad("a sentinel port is not a number") from None
        if not 0 < port < 65536:
            raise _bad("a sentinel port is out of range")
        sentinels.append((host, port))
    parts = [unquote(p) for p in path.split("/")] if path else []
    if parts and parts[-1] == "":
        parts.pop()  # a trailing slash
    if not parts or not parts[0]:
        raise _bad("no master name")
    if len(parts) > 2:
        raise _bad("too many path segments")
    db = 0
    if len(parts) == 2:
        if not parts[1].isdigit():
            raise _bad("the database number is not a non-negative integer")
        db = int(parts[1])
    return SentinelURL(tuple(sentinels), parts[0], db, username, password)


def client_for_url(url: str, **kwargs: Any) -> redis.Redis:
    """A new ``redis.Redis`` for ``url``: ``Redis.from_url`` for a plain URL, the current
    master of a Sentinel URL (``Sentinel(...).master_for(...)``) otherwise.

    A Sentinel-managed client asks the sentinels for the master on every (re)connect,
    so after a failover it reaches the promoted replica by itself; while no master is
    known its commands raise ``redis.ConnectionError`` (``MasterNotFoundError``), which
    :func:`redis_errors` turns into :class:`TransportError` for callers.

    Raises:
        ValidationError: a malformed URL, e.g. an unknown scheme or a ``redis+sentinel://``
            URL without a master name (field ``ATLAS_REDIS_URL``).
    """
    if not is_sentinel_url(url):
        try:
            return redis.Redis.from_url(url, **kwargs)
        except ValueError as exc:  # unknown scheme, bad port or db: redis-py's words
            raise ValidationError(f"{_FIELD}: {exc}", field=_FIELD) from None
    spec = parse_sentinel_url(url)
    # redis-py's sentinel module is untyped.
    sentinel = cast(Any, Sentinel)(
        list(spec.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        },
        **spec.connection_kwargs(),
    )
    return cast(
        redis.Redis, sentinel.master_for(spec.master_name, redis_class=redis.Redis, **kwargs)
    )


def async_client_for_url(url: str, **kwargs: Any) -> aioredis.Redis:
    """asyncio twin of :func:`client_for_url` (``redis.asyncio.sentinel`` for Sentinel)."""
    if not is_sentinel_url(url):
        try:
            return aioredis.Redis.from_url(url, **kwargs)
        except ValueError as exc:
            raise ValidationError(f"{_FIELD}: {exc}", field=_FIELD) from None
    spec = parse_sentinel_url(url)
    sentinel = cast(Any, AsyncSentinel)(
        list(spec.sentinels),
        sentinel_kwargs={
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        },
        **spec.connection_kwargs(),
    )
    return cast(
        aioredis.Redis, sentinel.master_for(spec.master_name, redis_class=aioredis.Redis, **kwargs)
    )


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
