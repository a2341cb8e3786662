"""One pooled Redis client per URL for the whole process (web node, worker, beat), and
:func:`redis_errors`, the one place where caller-facing Redis failures become
:class:`~atlas_tasks.errors.TransportError`.

``ATLAS_REDIS_URL`` is a plain ``redis://``/``rediss://``/``unix://`` URL, a Redis
Sentinel URL, ``redis+sentinel://[[user]:password@]host:port[,host:port...]/
master_name[/db]`` (:func:`parse_sentinel_url`), or a Redis Cluster URL,
``redis+cluster://[[user]:password@]host:port[,host:port...]`` (:func:`parse_cluster_url`).
Every client of the registry and the events is built by :func:`client_for_url` (sync) or
:func:`async_client_for_url` (asyncio): for Sentinel they ask the sentinels for the
current master, so a promoted replica is found again on reconnect after a failover; for
a cluster they are redis-py's cluster clients, which route each command by its key's
hash slot.

On a cluster, pub/sub subscribers use a plain client on one node
(:func:`pubsub_client_for_url`: classic ``PUBLISH`` reaches every node) and keyspace
notifications, which each node sends only for its own keys, need a subscriber per
primary (:func:`cluster_primary_clients`).
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
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import RedisClusterException, SlotNotCoveredError
from redis.retry import Retry
from redis.sentinel import Sentinel

from atlas_tasks import constants as C
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


_SENTINEL_FORM = "redis+sentinel://[:password@]host:port[,host:port...]/master_name[/db]"
_CLUSTER_FORM = "redis+cluster://[[user]:password@]host:port[,host:port...]"


def _bad(detail: str, expected: str = _SENTINEL_FORM) -> ValidationError:
    # The message never repeats the URL: it may hold a password.
    return ValidationError(f"{_FIELD}: {detail}; expected {expected}", field=_FIELD)


def _split_userinfo(
    netloc: str, bad: Callable[[str], ValidationError]
) -> tuple[str | None, str | None, str]:
    """``[[user]:password@]hostlist`` -> (username, password, hostlist)."""
    userinfo, at, hostlist = netloc.rpartition("@")
    username: str | None = None
    password: str | None = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
        if username and password is None:  # "user@" alone: redis-py would send no AUTH
            raise bad("credentials need a password (':password@' or 'user:password@')")
    return username, password, hostlist


def _parse_hosts(
    hostlist: str, default_port: int, noun: str, bad: Callable[[str], ValidationError]
) -> tuple[tuple[str, int], ...]:
    """``host:port[,host:port...]`` (``[ipv6]:port`` too) -> ``((host, port), ...)``."""
    hosts: list[tuple[str, int]] = []
    for item in hostlist.split(","):
        item = item.strip()
        if not item:
            raise bad(f"empty {noun} address")
        if item.startswith("["):  # [ipv6]:port
            host, bracket, port_text = item[1:].partition("]")
            if not bracket or (port_text and not port_text.startswith(":")):
                raise bad(f"malformed IPv6 {noun} address")
            port_text = port_text[1:]
        else:
            host, _, port_text = item.partition(":")
        if not host:
            raise bad(f"a {noun} address has no host")
        try:
            port = int(port_text) if port_text else default_port
        except ValueError:
            raise bad(f"a {noun} port is not a number") from None
        if not 0 < port < 65536:
            raise bad(f"a {noun} port is out of range")
        hosts.append((host, port))
    return tuple(hosts)


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
    username, password, hostlist = _split_userinfo(netloc, _bad)
    sentinels = _parse_hosts(hostlist, DEFAULT_SENTINEL_PORT, "sentinel", _bad)
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
    return SentinelURL(sentinels, parts[0], db, username, password)


# ---------------------------------------------------------------- Redis Cluster
#: Port of a cluster node given without one.
DEFAULT_CLUSTER_PORT = 6379
#: Connect/read timeout (s) of the probes that look for a reachable node
#: (:func:`pubsub_client_for_url`, :func:`cluster_primary_clients`): a dead node must not
#: stall the search, the next one is tried instead.
CLUSTER_PROBE_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class ClusterURL:
    """A parsed ``redis+cluster://`` URL.

    Attributes:
        nodes: ``(host, port)`` of every startup node, in the order given. The client
            asks the first that answers for the slot map; the other nodes are found
            from it, so a few nodes are enough.
        username, password: credentials of every node. Never in the repr.
    """

    nodes: tuple[tuple[str, int], ...]
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)

    def connection_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every node connection (the credentials)."""
        kwargs: dict[str, Any] = {}
        if self.username:
            kwargs["username"] = self.username
        if self.password:
            kwargs["password"] = self.password
        return kwargs


def is_cluster_url(url: str | None) -> bool:
    """Whether ``url`` names a Redis Cluster (``redis+cluster://...``)."""
    return bool(url) and str(url).lower().startswith(C.CLUSTER_URL_SCHEME)


def _bad_cluster(detail: str) -> ValidationError:
    return _bad(detail, _CLUSTER_FORM)


def parse_cluster_url(url: str) -> ClusterURL:
    """Parse ``redis+cluster://[[user]:password@]host:port[,host:port...][/0]``.

    A port may be left out (6379). A path may only name database 0: a Redis Cluster has
    no other.

    Raises:
        ValidationError: (field ``ATLAS_REDIS_URL``) a malformed URL; the message says
            what is wrong without echoing the URL (it may contain a password).
    """
    if not is_cluster_url(url):
        raise _bad_cluster("not a redis+cluster:// URL")
    rest = url.split("://", 1)[1]
    if "?" in rest or "#" in rest:
        raise _bad_cluster("query strings and fragments are not supported")
    netloc, _, path = rest.partition("/")
    username, password, hostlist = _split_userinfo(netloc, _bad_cluster)
    nodes = _parse_hosts(hostlist, DEFAULT_CLUSTER_PORT, "node", _bad_cluster)
    db_text = path.rstrip("/")
    if db_text:
        if "/" in db_text:
            raise _bad_cluster("too many path segments")
        if not db_text.isdigit():
            raise _bad_cluster("the database number is not a non-negative integer")
        if int(db_text) != 0:
            raise _bad_cluster("a Redis Cluster has only database 0")
    return ClusterURL(nodes, username, password)


class ClusterUnavailableError(redis.ConnectionError):
    """No node of the cluster could be reached, or a slot has no node serving it.

    redis-py raises these as ``RedisClusterException``, which is *not* a
    ``redis.RedisError``; the atlas cluster clients re-raise them as this
    ``redis.ConnectionError`` so that code written for one Redis (retry loops catching
    ``redis.RedisError``, :func:`redis_errors`) treats them like a Redis that is down.
    The original is chained (``__cause__``).
    """


class ClusterClientError(redis.RedisError):
    """Any other redis-py ``RedisClusterException`` (a multi-key command or script
    whose keys hash to different slots, a transaction across slots, a command redis-py
    blocks in cluster pipelines), re-raised as a ``redis.RedisError``."""


def _cluster_error(exc: RedisClusterException) -> redis.RedisError:
    """The ``redis.RedisError`` standing for redis-py's cluster exception ``exc``."""
    unavailable = isinstance(exc, SlotNotCoveredError) or str(exc).startswith(
        "Redis Cluster cannot be connected"
    )
    return (ClusterUnavailableError if unavailable else ClusterClientError)(str(exc))


def _translating(execute: Callable[..., Any]) -> Callable[..., Any]:
    """``execute`` (a cluster pipeline's) with cluster exceptions re-raised as Redis ones."""

    @functools.wraps(execute)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return execute(*args, **kwargs)
        except RedisClusterException as exc:
            raise _cluster_error(exc) from exc

    return wrapper


def _atranslating(execute: Callable[..., Any]) -> Callable[..., Any]:
    """asyncio twin of :func:`_translating`."""

    @functools.wraps(execute)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return await execute(*args, **kwargs)
        except RedisClusterException as exc:
            raise _cluster_error(exc) from exc

    return wrapper


class AtlasRedisCluster(RedisCluster):
    """redis-py's ``RedisCluster`` whose failures are all ``redis.RedisError``s
    (:class:`ClusterUnavailableError`, :class:`ClusterClientError`), like a single
    Redis's: callers and retry loops need no cluster-specific ``except``."""

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run a command (routed by its key's slot); see the class docstring for errors."""
        try:
            # redis-py's sync cluster module is untyped.
            return cast(Any, super()).execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _cluster_error(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        """A cluster pipeline whose ``execute`` raises ``redis.RedisError``s only.

        ``transaction=False`` (what atlas uses) may mix slots: commands are grouped per
        node. ``transaction=True`` works when every key is in one slot (else
        ``CrossSlotTransactionError``, here :class:`ClusterClientError`).
        """
        pipe = cast(Any, super()).pipeline(transaction=transaction, shard_hint=shard_hint)
        pipe.execute = _translating(pipe.execute)
        return pipe


class AtlasAsyncRedisCluster(AsyncRedisCluster):
    """asyncio twin of :class:`AtlasRedisCluster`."""

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        """Run a command (routed by its key's slot), raising ``redis.RedisError``s only."""
        try:
            return await super().execute_command(*args, **kwargs)
        except RedisClusterException as exc:
            raise _cluster_error(exc) from exc

    def pipeline(self, transaction: Any = None, shard_hint: Any = None) -> Any:
        """A cluster pipeline whose ``execute`` raises ``redis.RedisError``s only."""
        pipe = cast(Any, super()).pipeline(transaction=transaction, shard_hint=shard_hint)
        pipe.execute = _atranslating(pipe.execute)
        return pipe


#: Keywords of ``redis.Redis`` not given to redis-py's cluster clients.
#: ``retry_on_timeout``: the cluster clients retry timeouts and connection errors
#: themselves (``cluster_error_retry_attempts``, re-reading the slot map); the sync one
#: warns that the keyword is deprecated, the asyncio one does not take it (TypeError).
_CLUSTER_DROPPED = frozenset({"retry_on_timeout"})


def _cluster_client(url: str, kwargs: dict[str, Any]) -> redis.Redis:
    spec = parse_cluster_url(url)
    options = {k: v for k, v in kwargs.items() if k not in _CLUSTER_DROPPED}
    # redis-py's sync cluster passes only the connection keywords it knows to each
    # node's pool and drops the rest without a word (health_check_interval among them).
    try:
        client = AtlasRedisCluster(
            startup_nodes=[cast(Any, ClusterNode)(host, port) for host, port in spec.nodes],
            **spec.connection_kwargs(),
            **options,
        )
    except RedisClusterException as exc:  # the sync client reads the slot map at once
        raise _cluster_error(exc) from exc
    # RedisCluster implements the same command API as redis.Redis (routing each command
    # by its key's slot); the rest of the code types its clients as redis.Redis.
    return cast(redis.Redis, client)


def _async_cluster_client(url: str, kwargs: dict[str, Any]) -> aioredis.Redis:
    spec = parse_cluster_url(url)
    options = {k: v for k, v in kwargs.items() if k not in _CLUSTER_DROPPED}
    # Lazy: the asyncio client reads the slot map on its first command.
    client = AtlasAsyncRedisCluster(
        startup_nodes=[AsyncClusterNode(host, port) for host, port in spec.nodes],
        **spec.connection_kwargs(),
        **options,
    )
    # Same command API as aioredis.Redis (see _cluster_client).
    return cast(aioredis.Redis, client)


def _node_kwargs(spec: ClusterURL, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Keywords of a plain client on one node: the caller's, and the URL's credentials."""
    return {**kwargs, **spec.connection_kwargs()}


def pubsub_client_for_url(url: str, **kwargs: Any) -> redis.Redis:
    """A client to SUBSCRIBE with: :func:`client_for_url` for one Redis or Sentinel; for
    a cluster, a plain ``redis.Redis`` on the first startup node that answers PING.

    Classic ``PUBLISH`` on a cluster is forwarded to every node, so one node's
    subscriber sees every message, whichever node it was published on (sharded
    ``SPUBLISH`` is not used). If that node goes away, the subscriber's connection fails
    with ``redis.ConnectionError``; call this again to pick another node.

    Raises:
        ValidationError: a malformed URL.
        ClusterUnavailableError: (a ``redis.ConnectionError``) no startup node answered.
    """
    if not is_cluster_url(url):
        return client_for_url(url, **kwargs)
    spec = parse_cluster_url(url)
    last: BaseException | None = None
    for host, port in spec.nodes:
        probe = redis.Redis(
            host=host,
            port=port,
            socket_connect_timeout=CLUSTER_PROBE_TIMEOUT_S,
            socket_timeout=CLUSTER_PROBE_TIMEOUT_S,
            # One try: redis-py retries a refused connection with backoff by default
            # (seconds per dead node); the next node is the retry here.
            retry=Retry(NoBackoff(), 0),
            **spec.connection_kwargs(),
        )
        try:
            probe.ping()
        except redis.RedisError as exc:
            last = exc
            continue
        finally:
            probe.close()
        return redis.Redis(host=host, port=port, **_node_kwargs(spec, kwargs))
    raise ClusterUnavailableError(
        f"none of the {len(spec.nodes)} startup nodes of the cluster answered: {last}"
    )


async def async_pubsub_client_for_url(url: str, **kwargs: Any) -> aioredis.Redis:
    """asyncio twin of :func:`pubsub_client_for_url` (a coroutine: the node search
    talks to Redis; for one Redis or Sentinel it is :func:`async_client_for_url`)."""
    if not is_cluster_url(url):
        return async_client_for_url(url, **kwargs)
    spec = parse_cluster_url(url)
    last: BaseException | None = None
    for host, port in spec.nodes:
        probe = aioredis.Redis(
            host=host,
            port=port,
            socket_connect_timeout=CLUSTER_PROBE_TIMEOUT_S,
            socket_timeout=CLUSTER_PROBE_TIMEOUT_S,
            retry=AsyncRetry(NoBackoff(), 0),  # one try (see pubsub_client_for_url)
            **spec.connection_kwargs(),
        )
        try:
            await probe.ping()
        except redis.RedisError as exc:
            last = exc
            continue
        finally:
            await probe.aclose()
        return aioredis.Redis(host=host, port=port, **_node_kwargs(spec, kwargs))
    raise ClusterUnavailableError(
        f"none of the {len(spec.nodes)} startup nodes of the cluster answered: {last}"
    )


def cluster_primary_clients(url: str, **kwargs: Any) -> list[redis.Redis]:
    """One plain ``redis.Redis`` per primary of the cluster at ``url`` (for keyspace
    notifications, which each node sends only for its own keys, and per-node checks);
    ``[client_for_url(url)]`` for one Redis or Sentinel.

    The primaries are read from the cluster's slot map now: after a failover or a
    resharding, call this again.

    Raises:
        ValidationError: a malformed URL.
        ClusterUnavailableError: (a ``redis.ConnectionError``) no startup node answered.
    """
    if not is_cluster_url(url):
        return [client_for_url(url, **kwargs)]
    spec = parse_cluster_url(url)
    discovery = cast(
        Any,
        _cluster_client(
            url,
            {
                "socket_connect_timeout": CLUSTER_PROBE_TIMEOUT_S,
                "socket_timeout": CLUSTER_PROBE_TIMEOUT_S,
            },
        ),
    )
    try:
        primaries = [(node.host, int(node.port)) for node in discovery.get_primaries()]
    finally:
        discovery.close()
    return [
        redis.Redis(host=host, port=port, **_node_kwargs(spec, kwargs))
        for host, port in sorted(primaries)
    ]


def client_for_url(url: str, **kwargs: Any) -> redis.Redis:
    """A new ``redis.Redis`` for ``url``: ``Redis.from_url`` for a plain URL, the current
    master of a Sentinel URL (``Sentinel(...).master_for(...)``), or for a
    ``redis+cluster://`` URL an :class:`AtlasRedisCluster` (typed ``redis.Redis``: it
    has the same command API and routes each command to the node of its key's slot).

    A cluster client reads the slot map when it is built, so an unreachable cluster
    raises :class:`ClusterUnavailableError` (a ``redis.ConnectionError``) here already.
    Its commands, scripts and pipelines raise only ``redis.RedisError``s. Keywords
    redis-py's cluster client does not take for its nodes (``health_check_interval``)
    are dropped by redis-py.

    A Sentinel-managed client asks the sentinels for the master on every (re)connect,
    so after a failover it reaches the promoted replica by itself; while no master is
    known its commands raise ``redis.ConnectionError`` (``MasterNotFoundError``), which
    :func:`redis_errors` turns into :class:`TransportError` for callers.

    Raises:
        ValidationError: a malformed URL, e.g. an unknown scheme or a ``redis+sentinel://``
            URL without a master name (field ``ATLAS_REDIS_URL``).
    """
    if is_cluster_url(url):
        return _cluster_client(url, kwargs)
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
    """asyncio twin of :func:`client_for_url` (``redis.asyncio.sentinel`` for Sentinel,
    an :class:`AtlasAsyncRedisCluster` typed ``aioredis.Redis`` for a cluster, which
    reads the slot map on its first command)."""
    if is_cluster_url(url):
        return _async_cluster_client(url, kwargs)
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
    """Turn any ``redis.RedisError`` (or redis-py ``RedisClusterException``) raised inside
    into a :class:`TransportError`.

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
    except REDIS_ERRORS as exc:
        raise transport_error(what, exc, url) from exc


#: Every exception a Redis client of atlas may raise for a Redis failure: redis-py's
#: cluster code raises ``RedisClusterException``, which is not a ``redis.RedisError``
#: (the atlas cluster clients re-raise it as one, but a cluster client built elsewhere,
#: or its pub/sub, may not).
REDIS_ERRORS: tuple[type[Exception], ...] = (redis.RedisError, RedisClusterException)


def transport_error(what: str, exc: Exception, url: str | None = None) -> TransportError:
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
                except REDIS_ERRORS as exc:
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
            except REDIS_ERRORS as exc:
                raise transport_error(what, exc) from exc

        return wrapper

    return decorate
