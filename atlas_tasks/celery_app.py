"""The Celery app of atlas_tasks: ``celery -A atlas_tasks.celery_app worker -E``.

Configuration comes from :class:`atlas_tasks.config.AtlasSettings` and is applied lazily
(``add_defaults`` with a callable), so importing this module reads no environment. Your
own ``CELERY_*`` settings can still override anything through ``app.conf``.

* JSON only; task events on (Flower), published unbuffered from thread pools
  (:mod:`atlas_tasks.worker_events`); results in Redis for a day, with no result
  subscription per enqueue (:mod:`atlas_tasks.result_backend`, chosen in code for a plain
  ``redis://`` ``result_backend`` URL so ``celery inspect conf`` can parse it).
* Spawn/terminate are late-acked and rejected on worker loss (they are idempotent).
* Queues ``compute``, ``jobs``, ``fly``, ``maintenance`` (``<namespace>.compute``... when
  ``ATLAS_NAMESPACE`` is not ``atlas``: :func:`worker_queues`).
* Beat uses redbeat (schedule and a single-beat lock in Redis) through
  :class:`atlas_tasks.beat.AtlasRedBeatScheduler`, which survives Redis restarts, and runs
  the reaper every ``ATLAS_REAP_INTERVAL_MS``. The sweep is quiet: no stored result, no
  task events, no Celery log lines (:class:`QuietSweepFilter`) unless it did something.
* Each worker runs a keyspace-expiry listener thread: the fast path of the idle clock,
  and warns at start when its Redis has no persistence (:func:`persistence_problem`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import redis
from celery import Celery, signals
from kombu.entity import Queue
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from atlas_tasks import constants as C
from atlas_tasks import task_reprs
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.errors import ValidationError
from atlas_tasks.keyspace_names import Keyspace, keyspace
from atlas_tasks.result_backend import atlas_backend_class
from atlas_tasks.worker_events import UnbufferedTaskEvents

if TYPE_CHECKING:
    from atlas_tasks.redis_conn import SentinelURL

log = logging.getLogger(__name__)

TASK_MODULES = [
    "atlas_tasks.tasks.compute",
    "atlas_tasks.tasks.reaper",
    "atlas_tasks.tasks.jobs",
    "atlas_tasks.tasks.fly",
    "atlas_tasks.tasks.quotas",
    "atlas_tasks.tasks.meter",
]

#: Base queue of every atlas task, by task-name prefix (Celery glob routes). Routing is
#: policy, in one place: call sites and beat entries pass no ``queue=`` (a test checks that
#: every ``constants.TASK_*`` resolves to one of :data:`QUEUES`).
_BASE_ROUTES = {
    "atlas.compute.*": C.QUEUE_COMPUTE,
    "atlas.jobs.*": C.QUEUE_JOBS,
    "atlas.fly.*": C.QUEUE_FLY,
    "atlas.reaper.*": C.QUEUE_MAINTENANCE,
    "atlas.quotas.*": C.QUEUE_MAINTENANCE,
    "atlas.sessions.*": C.QUEUE_MAINTENANCE,
}
_BASE_QUEUES = (C.QUEUE_COMPUTE, C.QUEUE_JOBS, C.QUEUE_FLY, C.QUEUE_MAINTENANCE)


def task_routes(ks: Keyspace) -> dict[str, dict[str, str]]:
    """The routes of a namespace: ``compute``... by default, ``<namespace>.compute``...
    otherwise, so deployments sharing a broker never consume each other's tasks."""
    return {glob: {"queue": ks.queue(base)} for glob, base in _BASE_ROUTES.items()}


def worker_queues(ks: Keyspace | None = None) -> tuple[str, ...]:
    """The queues an atlas worker of ``ks`` (default: ``ATLAS_NAMESPACE``) consumes."""
    ks = ks or keyspace()
    return tuple(ks.queue(base) for base in _BASE_QUEUES)


#: Routes of the default namespace (see :func:`task_routes`).
TASK_ROUTES: dict[str, dict[str, str]] = task_routes(Keyspace(C.DEFAULT_NAMESPACE))
#: The queues an atlas worker of the default namespace consumes (:func:`worker_queues`).
QUEUES = _BASE_QUEUES


def build_config(settings: AtlasSettings) -> dict[str, Any]:
    """Celery settings derived from atlas settings."""
    reap_s = settings.reap_interval_ms / 1000
    ks = keyspace(settings.namespace)
    config: dict[str, Any] = {
        # broker_url, result_backend, their transport options and redbeat's connection:
        # transport_config() below, which knows Sentinel and RabbitMQ.
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "result_expires": 24 * 3600,
        "result_extended": True,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        # One message at a time per worker slot: late-acked work is not hoarded by a
        # worker that may die, and a burst spreads over every free slot.
        "worker_prefetch_multiplier": 1,
        "task_soft_time_limit": settings.spawn_time_limit_s,
        "task_time_limit": settings.spawn_time_limit_s + 30,
        "task_default_queue": ks.queue(C.QUEUE_MAINTENANCE),
        "task_queues": [Queue(q) for q in worker_queues(ks)],
        "task_routes": task_routes(ks),
        # redbeat, made to survive Redis restarts and outages (atlas_tasks.beat).
        "beat_scheduler": "atlas_tasks.beat:AtlasRedBeatScheduler",
        # "<namespace>:redbeat:": each deployment has its own schedule and beat lock.
        "redbeat_key_prefix": ks.key(C.REDBEAT_KEY_PREFIX),
        # Short lock: if beat dies, a standby beat takes over within seconds.
        "redbeat_lock_timeout": max(5, int(reap_s * 5)),
        "beat_max_loop_interval": max(0.5, min(reap_s, 5.0)),
        "beat_schedule": {
            "atlas-reaper": {
                "task": C.TASK_REAP,
                "schedule": reap_s,
                # No `expires`: it would be an absolute time from beat's clock, checked
                # against the worker's, and a beat a few seconds behind made every sweep
                # "revoked". The task itself drops stale/duplicate sweeps with a Redis
                # throttle (atlas_tasks.tasks.reaper), which involves no process clock.
                # Its queue comes from TASK_ROUTES like every other task's.
            },
            # Catalog prices for quota admission (atlas_tasks.tasks.quotas). A missed or
            # late run only leaves the cached prices a little older.
            "atlas-quota-prices": {
                "task": C.TASK_QUOTA_REFRESH_PRICES,
                "schedule": settings.price_refresh_interval_ms / 1000,
            },
            # The cost guardrails (atlas_tasks.tasks.meter): throttled in Redis like the
            # sweep, so they need no `expires` either.
            "atlas-cost-meter": {
                "task": C.TASK_METER,
                "schedule": settings.meter_interval_ms / 1000,
            },
            "atlas-billing-reconcile": {
                "task": C.TASK_RECONCILE_BILLING,
                "schedule": settings.billing_reconcile_interval_ms / 1000,
            },
            "atlas-gpu-watch": {
                "task": C.TASK_GPU_WATCH,
                "schedule": settings.gpu_watch_interval_ms / 1000,
            },
        },
    }
    config.update(transport_config(settings))
    return config


#: Broker URL schemes served by kombu's Redis transports (visibility timeout & co. apply).
_REDIS_BROKER_SCHEMES = ("redis", "rediss", "sentinel", "redis+socket", "socket")
_AMQP_SCHEMES = ("amqp", "amqps", "pyamqp")

#: What runs where when ``ATLAS_REDIS_URL`` is a Redis Cluster (validation errors and
#: the README say it in these words).
CLUSTER_COMBINATION = (
    "registry and events on Redis Cluster; broker on RabbitMQ/Redis/Sentinel; "
    "results and redbeat on Redis/Sentinel"
)
#: ``ATLAS_BROKER_URL`` forms accepted next to a Redis Cluster ``ATLAS_REDIS_URL``.
_CLUSTER_BROKERS = ("redis", "rediss", "redis+sentinel", *_AMQP_SCHEMES)
#: ``ATLAS_RESULT_BACKEND`` forms accepted next to a Redis Cluster (redbeat uses it too).
_CLUSTER_BACKENDS = ("redis", "rediss", "redis+sentinel")


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def check_celery_urls(settings: AtlasSettings) -> None:
    """Refuse broker/result-backend settings Celery cannot serve.

    Celery has no Redis Cluster transport, and redbeat and the result backend need one
    plain (or Sentinel-managed) Redis. So ``redis+cluster://`` is never a broker or
    result backend, and with ``ATLAS_REDIS_URL=redis+cluster://...`` both
    ``ATLAS_BROKER_URL`` (``redis://``, ``rediss://``, ``redis+sentinel://`` or
    ``amqp://``) and ``ATLAS_RESULT_BACKEND`` (``redis://``, ``rediss://`` or
    ``redis+sentinel://``; redbeat uses it too) must be set: :data:`CLUSTER_COMBINATION`.

    Raises:
        ValidationError: naming ``ATLAS_BROKER_URL`` or ``ATLAS_RESULT_BACKEND`` (the
            message never repeats a URL: it may hold a password).
    """
    from atlas_tasks.redis_conn import is_cluster_url

    cluster = is_cluster_url(settings.redis_url)
    for field, value, allowed, what in (
        ("ATLAS_BROKER_URL", settings.broker_url, _CLUSTER_BROKERS, "broker"),
        ("ATLAS_RESULT_BACKEND", settings.result_backend, _CLUSTER_BACKENDS, "result backend"),
    ):
        forms = ", ".join(f"{s}://" for s in allowed)
        if value and is_cluster_url(value):
            raise ValidationError(
                f"{field}: Celery has no Redis Cluster transport, so the {what} cannot "
                f"be a redis+cluster:// URL; use {forms}. Supported with Redis Cluster: "
                f"{CLUSTER_COMBINATION}",
                field=field,
            )
        if not cluster:
            continue
        if not value:
            raise ValidationError(
                f"{field}: required when ATLAS_REDIS_URL is a Redis Cluster "
                f"(redis+cluster://): Celery's {what} cannot use it; set {field} to a "
                f"{forms} URL. Supported: {CLUSTER_COMBINATION}",
                field=field,
            )
        if _scheme(value) not in allowed:
            hint = (
                " (write a Sentinel as redis+sentinel://host:port[,host:port...]/master_name"
                "[/db]: kombu's sentinel:// form carries no master name)"
                if _scheme(value) == "sentinel"
                else ""
            )
            raise ValidationError(
                f"{field}: with ATLAS_REDIS_URL on Redis Cluster the {what} must be a "
                f"{forms} URL{hint}. Supported: {CLUSTER_COMBINATION}",
                field=field,
            )


def _celery_form(url: str, field: str) -> tuple[str, dict[str, Any], SentinelURL | None]:
    """``url`` as kombu/Celery spell it, the Sentinel options it needs, and its parsed
    Sentinel spec: a ``redis+sentinel://`` URL becomes kombu's ``sentinel://h1:p1/db;
    sentinel://h2:p2/db`` with ``master_name`` in the options; others are unchanged.

    Raises:
        ValidationError: a malformed ``redis+sentinel://`` URL (naming ``field``).
    """
    from urllib.parse import quote

    from atlas_tasks.redis_conn import (
        SENTINEL_SOCKET_TIMEOUT_S,
        is_sentinel_url,
        parse_sentinel_url,
    )

    if not is_sentinel_url(url):
        return url, {}, None
    try:
        spec = parse_sentinel_url(url)
    except ValidationError as exc:  # its message names ATLAS_REDIS_URL: name ours
        detail = (exc.message or str(exc)).split(": ", 1)[-1]
        raise ValidationError(f"{field}: {detail}", field=field) from None
    auth = ""
    if spec.password:
        auth = f"{quote(spec.username or '', safe='')}:{quote(spec.password, safe='')}@"
    kombu_url = ";".join(
        f"sentinel://{auth}{f'[{h}]' if ':' in h else h}:{p}/{spec.db}" for h, p in spec.sentinels
    )
    master = {
        "master_name": spec.master_name,
        # Ask the sentinels with a short timeout and without the master's
        # password (kombu would send its connection options otherwise).
        "sentinel_kwargs": {
            "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
        },
    }
    return kombu_url, master, spec


def _redbeat_config(url: str, sentinel: SentinelURL | None) -> dict[str, Any]:
    """redbeat's connection settings for the plain Redis ``url`` or the Sentinel-managed
    one ``sentinel`` (never a cluster: redbeat's lock and schedule need one Redis)."""
    from atlas_tasks.redis_conn import SENTINEL_SOCKET_TIMEOUT_S

    if sentinel is not None:
        # redbeat reads only the scheme of this URL; the sentinels come from the options.
        host, port = sentinel.sentinels[0]
        options: dict[str, Any] = {
            "sentinels": list(sentinel.sentinels),
            "service_name": sentinel.master_name,
            "db": sentinel.db,
            "socket_timeout": 5,
            "sentinel_kwargs": {
                "socket_timeout": SENTINEL_SOCKET_TIMEOUT_S,
                "socket_connect_timeout": SENTINEL_SOCKET_TIMEOUT_S,
            },
        }
        if sentinel.password:
            options["password"] = sentinel.password
        if sentinel.username:
            options["username"] = sentinel.username
        return {
            "redbeat_redis_url": f"redis-sentinel://{host}:{port}/{sentinel.db}",
            "redbeat_redis_options": options,
        }
    return {
        "redbeat_redis_url": url,
        # redbeat's own Redis client does not retry: without this, beat exits on the
        # first connection error (a Redis restart). OSError covers a refused reconnect.
        "redbeat_redis_options": {
            "retry": Retry(
                ExponentialBackoff(cap=1.0, base=0.1),
                30,
                supported_errors=(RedisConnectionError, RedisTimeoutError, OSError),
            ),
            "retry_on_error": [RedisConnectionError, RedisTimeoutError, OSError],
        },
    }


def transport_config(settings: AtlasSettings) -> dict[str, Any]:
    """Where Celery's broker, result backend and redbeat connect, and how.

    * Plain ``ATLAS_REDIS_URL``: broker, results and redbeat all use it (as before).
    * ``ATLAS_REDIS_URL=redis+sentinel://...``: the broker and results use kombu's/Celery's
      own Sentinel transport (``sentinel://h1:p1/db;sentinel://h2:p2/db`` with
      ``master_name`` in ``broker_transport_options`` and
      ``result_backend_transport_options``), redbeat its ``redis-sentinel://`` support
      (``sentinels`` and ``service_name`` in ``redbeat_redis_options``).
    * ``ATLAS_BROKER_URL`` / ``ATLAS_RESULT_BACKEND`` win when given; a ``sentinel://``
      one gets the master name of a Sentinel ``ATLAS_REDIS_URL``, a
      ``redis+sentinel://`` one is turned into kombu's form with its own master name.
      An ``amqp://`` broker (RabbitMQ) gets publisher confirms instead of the Redis-only
      options (visibility timeout, unacked restore), which mean nothing to it.
    * ``ATLAS_REDIS_URL=redis+cluster://...``: Celery cannot use a cluster, so
      ``ATLAS_BROKER_URL`` and ``ATLAS_RESULT_BACKEND`` are required
      (:func:`check_celery_urls`), and redbeat uses the result backend's Redis.

    Raises:
        ValidationError: a malformed Sentinel URL, or broker/result-backend settings
            Celery cannot serve (:func:`check_celery_urls`).
    """
    from atlas_tasks.redis_conn import is_cluster_url

    check_celery_urls(settings)
    derived, master, sentinel = _celery_form(settings.redis_url, "ATLAS_REDIS_URL")
    broker, broker_master = derived, master
    if settings.broker_url:
        broker, broker_master, _ = _celery_form(settings.broker_url, "ATLAS_BROKER_URL")
    backend, backend_master, backend_sentinel = derived, master, sentinel
    if settings.result_backend:
        backend, backend_master, backend_sentinel = _celery_form(
            settings.result_backend, "ATLAS_RESULT_BACKEND"
        )
    # A kombu-form sentinel:// URL given as is borrows the master name of a Sentinel
    # ATLAS_REDIS_URL (the form carries none).
    broker_master = broker_master or master
    backend_master = backend_master or master
    scheme = _scheme(broker)
    transport: dict[str, Any]
    if scheme in _REDIS_BROKER_SCHEMES:
        transport = {
            "visibility_timeout": settings.visibility_timeout_s,
            # Look for unacked messages of dead workers every 2 s instead of every 100 s.
            "unacked_restore_interval": 2,
            "unacked_restore_throttle": 1,
        }
        if scheme == "sentinel":
            transport.update(broker_master)
    elif scheme in _AMQP_SCHEMES:
        # A spawn/terminate message is sent once: wait for RabbitMQ to take it.
        transport = {"confirm_publish": True}
    else:
        transport = {}
    config: dict[str, Any] = {
        "broker_url": broker,
        # A plain URL: AtlasCelery picks AtlasRedisBackend for it in code, so that
        # `celery inspect conf` and Flower can still parse (and censor) the setting.
        "result_backend": backend,
        "broker_transport_options": transport,
    }
    if backend.lower().startswith("sentinel://"):
        config["result_backend_transport_options"] = dict(backend_master)
    if is_cluster_url(settings.redis_url):
        # redbeat's lock and schedule need one Redis: the result backend's (required
        # and checked to be redis://, rediss:// or redis+sentinel:// above).
        config.update(_redbeat_config(backend, backend_sentinel))
    else:
        config.update(_redbeat_config(settings.redis_url, sentinel))
    return config


class AtlasCelery(Celery):  # type: ignore[misc]  # untyped base
    """Celery app whose plain ``redis://`` result backend is :class:`AtlasRedisBackend`,
    and whose messages never show a secret argument (:func:`task_reprs.redacted` when the
    call site gave no reprs)."""

    def send_task(self, name: str, args: Any = None, kwargs: Any = None, **options: Any) -> Any:
        """Celery's ``send_task`` (also behind ``apply_async``), redacting by default."""
        if "argsrepr" not in options:
            options.update(task_reprs.redacted(name, args))
        return super().send_task(name, args, kwargs, **options)

    def _get_backend(self) -> Any:
        url = self.conf.result_backend
        # AtlasRedisBackend, or AtlasSentinelBackend for a sentinel:// URL.
        backend_cls = atlas_backend_class(url) if self.backend_cls is None else None
        if backend_cls is not None:
            return backend_cls(app=self, url=url)
        return super()._get_backend()


class QuietSweepFilter(logging.Filter):
    """Drop Celery's INFO lines ("Task ... received", "... succeeded in") about the
    beat-driven sweep: one pair a second drowned every other line of the worker log. The
    sweep logs on its own when it did something; failures (ERROR) still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for an INFO-or-below record whose task name is a quiet task."""
        if record.levelno > logging.INFO:
            return True
        args = record.args
        return not (isinstance(args, dict) and args.get("name") in QUIET_TASKS)


#: Tasks whose routine Celery log lines are filtered (see :class:`QuietSweepFilter`).
QUIET_TASKS = frozenset({C.TASK_REAP, C.TASK_METER, C.TASK_RECONCILE_BILLING, C.TASK_GPU_WATCH})
#: Loggers of Celery's "received" (worker strategy) and "succeeded" (tracer) lines.
_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")
_quiet_filter = QuietSweepFilter()


def install_quiet_sweep_logging() -> None:
    """Attach :class:`QuietSweepFilter` to Celery's task loggers (idempotent)."""
    for name in _TASK_LOGGERS:
        logger = logging.getLogger(name)
        if _quiet_filter not in logger.filters:
            logger.addFilter(_quiet_filter)


def create_app(settings: AtlasSettings | None = None) -> Celery:
    """Build a Celery app; settings are resolved when the config is first read."""
    app = AtlasCelery("atlas_tasks", include=list(TASK_MODULES))
    app.add_defaults(lambda: build_config(settings or get_settings()))
    app.steps["consumer"].add(UnbufferedTaskEvents)
    install_quiet_sweep_logging()
    return app


app = create_app()
celery = app

_apps_by_url: dict[tuple[str, str, str], Celery] = {}


_attached: Celery | None = None


def attach(host_app: Celery, *, beat: bool = True) -> Celery:
    """Serve atlas_tasks from your project's own Celery app (one worker fleet for both).

    Registers our tasks (``atlas.compute.spawn``...), adds our queues (``compute``,
    ``jobs``, ``fly``, ``maintenance``) next to yours, routes ``atlas.*`` tasks to them,
    adds the reaper to ``beat_schedule`` (``beat=False`` to leave beat alone) and the
    broker visibility timeout our late-acked tasks need, unless you set one. From then on
    :func:`get_app` (what ``orchestrator.spawn`` enqueues through) is ``host_app``.

    Your worker must consume our queues too::

        # proj/celery.py
        app = Celery("proj")
        app.config_from_object("django.conf:settings", namespace="CELERY")
        attach(app)
        # celery -A proj worker -Q celery,compute,jobs,fly,maintenance -E

    Without ``attach`` a worker of your app that consumes ``compute`` discards
    ``atlas.compute.spawn`` as an unregistered task. Atlas settings are read when
    ``attach`` is called.

    Returns:
        ``host_app``.
    """
    global _attached
    import importlib

    for module in TASK_MODULES:  # shared_task registers them with every app, host's too
        importlib.import_module(module)
    ours = build_config(get_settings())
    conf = host_app.conf
    conf.include = [
        *(conf.include or ()),
        *[m for m in TASK_MODULES if m not in (conf.include or ())],
    ]
    existing = list(conf.task_queues or [Queue(conf.task_default_queue)])
    names = {q.name for q in existing}
    conf.task_queues = existing + [q for q in ours["task_queues"] if q.name not in names]
    routes = conf.task_routes
    host_routes = list(routes) if isinstance(routes, list | tuple) else ([routes] if routes else [])
    conf.task_routes = [ours["task_routes"], *host_routes]
    transport = dict(conf.broker_transport_options or {})
    for key, value in ours["broker_transport_options"].items():
        transport.setdefault(key, value)
    conf.broker_transport_options = transport
    if beat:
        conf.beat_schedule = {**(conf.beat_schedule or {}), **ours["beat_schedule"]}
    if "consumer" in host_app.steps and UnbufferedTaskEvents not in host_app.steps["consumer"]:
        host_app.steps["consumer"].add(UnbufferedTaskEvents)
    install_quiet_sweep_logging()
    _attached = host_app
    return host_app


def detach() -> None:
    """Undo :func:`attach` for callers: :func:`get_app` is atlas's own app again (tests,
    tools that switch projects). The host app keeps its registered tasks."""
    global _attached
    _attached = None


def get_app() -> Celery:
    """The app callers enqueue through: the host app given to :func:`attach`, else
    :data:`app`, unless the broker settings changed since it was configured (tests and
    tools that point one process at several clusters), in which case an app for the
    current settings is built and cached."""
    if _attached is not None:
        return _attached
    settings = get_settings()
    derived = transport_config(settings)
    ks = keyspace(settings.namespace)
    key = (derived["broker_url"], derived["result_backend"], ks.namespace)
    # The namespace too: it decides the queues a call is routed to.
    if (app.conf.broker_url, app.conf.result_backend, app.conf.task_default_queue) == (
        key[0],
        key[1],
        ks.queue(C.QUEUE_MAINTENANCE),
    ):
        return app
    other = _apps_by_url.get(key)
    if other is None:
        other = _apps_by_url[key] = create_app(settings)
    return other


def queue_has_consumers(queue: str, timeout: float = 1.0, celery_app: Celery | None = None) -> bool:
    """Whether any running worker consumes ``queue`` (a control broadcast, answered
    within ``timeout`` seconds). Lets a caller tell "no worker for ``compute``" apart
    from "the spawn is slow" before blocking on a result."""
    reply = (celery_app or get_app()).control.inspect(timeout=timeout).active_queues() or {}
    return any(q.get("name") == queue for queues in reply.values() for q in queues or [])


def persistence_problem(client: redis.Redis) -> str | None:
    """What is wrong with ``client``'s Redis persistence for the registry, or None.

    atlas keeps the session registry, spawn intents and the beat lock in Redis: a restart
    of a Redis with no persistence forgets every tracked pod. AOF with ``everysec`` is
    the requirement. Returns None when ``CONFIG GET`` is refused (managed Redis): we
    cannot tell, so we do not cry wolf.
    """
    try:
        conf = client.config_get("appendonly")
        save = client.config_get("save").get("save", "")
    except redis.ResponseError:
        return None
    if str(conf.get("appendonly", "")).lower() == "yes":
        return None
    if save:
        return (
            f"Redis has RDB snapshots only (save {save!r}, appendonly no): a restart "
            "loses everything since the last snapshot, including tracked sessions"
        )
    return (
        "Redis has no persistence (appendonly no, save ''): a restart loses every "
        "tracked session, spawn intent and the beat lock, and their pods leak until "
        "the orphan sweep finds them"
    )


def warn_if_redis_not_persistent(url: str) -> str | None:
    """Log a warning when the registry's Redis at ``url`` lacks persistence; returns it.

    On a Redis Cluster every primary is checked (``CONFIG GET`` through a cluster client
    would ask one node only); the first problem found is reported, naming the node.
    """
    from atlas_tasks.redis_conn import cluster_primary_clients, is_cluster_url

    problem: str | None = None
    try:
        clients = cluster_primary_clients(url, socket_connect_timeout=5, socket_timeout=5)
    except redis.RedisError as exc:
        log.info("could not check Redis persistence: %s", exc)
        return None
    try:
        for client in clients:
            problem = persistence_problem(client)
            if problem:
                if is_cluster_url(url):
                    kwargs = client.connection_pool.connection_kwargs
                    problem = f"cluster node {kwargs.get('host')}:{kwargs.get('port')}: {problem}"
                break
    except redis.RedisError as exc:
        log.info("could not check Redis persistence: %s", exc)
        return None
    finally:
        for client in clients:
            client.close()
    if problem:
        log.warning(
            "%s. Run Redis with `appendonly yes` and `appendfsync everysec` "
            "(see README, Redis persistence).",
            problem,
        )
    return problem


_listener: Any = None


@signals.worker_init.connect
def _install_metrics(**_: Any) -> None:
    """Record provider requests and compute-task outcomes into Redis for ``/metrics``
    (before the pool forks, so prefork children inherit the hooks)."""
    from atlas_tasks.metrics import install_hooks

    install_hooks()


@signals.worker_ready.connect
def _check_redis_persistence(sender: Any = None, **_: Any) -> None:
    """Warn at worker start when the registry's Redis would forget it on restart."""
    warn_if_redis_not_persistent(get_settings().redis_url)
    _check_registry_layout()


def _check_registry_layout() -> None:
    """Log an error at worker start when the registry was written in another key layout
    (``ATLAS_REDIS_SHARDS`` changed with sessions live; the reaper's orphan scan then
    stays off, see ``SessionStore.layout_mismatch``)."""
    from atlas_tasks.redis_conn import get_redis
    from atlas_tasks.sessions.store import store_for

    try:
        mismatch = store_for(get_redis()).layout_mismatch()
    except Exception as exc:  # Redis away at start: the reaper checks again each sweep
        log.warning("could not check the registry's key layout: %s", exc)
        return
    if mismatch is not None:
        log.error(mismatch)


def foreign_queues(consumed: list[str] | set[str], ks: Keyspace) -> list[str]:
    """The atlas queues among ``consumed`` that belong to another namespace than ``ks``
    (``compute`` consumed by a ``staging`` worker, ``staging.compute`` by an ``atlas``
    one): such a worker would run another deployment's tasks against its own keys."""
    ours = set(worker_queues(ks))
    return sorted(q for q in consumed if q not in ours and q.rsplit(".", 1)[-1] in _BASE_QUEUES)


@signals.worker_ready.connect
def _check_queue_namespace(sender: Any = None, **_: Any) -> None:
    """Log an error when this worker consumes another namespace's queues (a ``-Q`` list
    written for the default namespace on a worker with another ``ATLAS_NAMESPACE``)."""
    try:
        consumed = {str(q.name) for q in sender.task_consumer.queues}
    except AttributeError:  # not a consumer we know how to read: nothing to check
        return
    ks = keyspace()
    foreign = foreign_queues(consumed, ks)
    if foreign:
        log.error(
            "this worker (ATLAS_NAMESPACE=%s) consumes %s, the queues of another "
            "namespace; it would run another deployment's tasks. Consume %s instead "
            "(`atlas-tasks worker` does).",
            ks.namespace,
            ", ".join(foreign),
            ",".join(worker_queues(ks)),
        )


@signals.worker_ready.connect
def _start_expiry_listener(sender: Any = None, **_: Any) -> None:
    """Start the keyspace-expiry fast path in the worker's main process."""
    global _listener
    settings = get_settings()
    if not settings.keyspace_events or _listener is not None:
        return
    from atlas_tasks.sessions.expiry_listener import ExpiryListener
    from atlas_tasks.tasks.reaper import enqueue_terminate

    _listener = ExpiryListener(
        settings.redis_url,
        lambda ids: enqueue_terminate(ids, "idle_timeout"),
        namespace=settings.namespace,
    )
    _listener.start()


@signals.beat_init.connect
def _refresh_prices_at_beat_start(sender: Any = None, **_: Any) -> None:
    """Fill the quota price cache once when beat starts: an interval schedule first fires
    a whole interval later, and until then admission would know no catalog price."""
    app = getattr(sender, "app", None)
    if app is None or C.TASK_QUOTA_REFRESH_PRICES not in {
        entry.get("task") for entry in (app.conf.beat_schedule or {}).values()
    }:
        return  # attached with beat=False: the host's beat is not ours to drive
    try:
        app.send_task(C.TASK_QUOTA_REFRESH_PRICES)
    except Exception as exc:  # the schedule still refreshes later; beat must start
        log.warning("could not enqueue the first quota price refresh: %s", exc)


@signals.worker_shutdown.connect
def _stop_expiry_listener(**_: Any) -> None:
    if _listener is not None:
        _listener.stop()


@signals.worker_process_init.connect
def _reset_after_fork(**_: Any) -> None:
    """Prefork children must not share the parent's sockets."""
    from atlas_tasks.providers.registry import clear_provider_cache
    from atlas_tasks.redis_conn import reset_redis_clients

    reset_redis_clients()
    clear_provider_cache()
