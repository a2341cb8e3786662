"""Operator commands: ``atlas-tasks sessions ...``, ``atlas-tasks doctor``, ``atlas-tasks
metrics``.

::

    atlas-tasks sessions list [--user U] [--status S] [--provider P] [--json]
    atlas-tasks sessions info ID [--json]
    atlas-tasks sessions touch ID
    atlas-tasks sessions stop ID
    atlas-tasks doctor [--json]        # exit 1 when a check fails
    atlas-tasks metrics --port 9808    # serve /metrics (Prometheus)

Tables use the real terminal width; when the output is piped they are not cut at 80
columns (``COLUMNS`` wins, else 200). Every failure is an
:class:`~atlas_tasks.errors.AtlasError` message and exit 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.table import Table

from atlas_tasks import constants as C
from atlas_tasks.errors import AtlasError

if TYPE_CHECKING:  # `atlas-tasks version` must not import redis (a test keeps the CLI light)
    import redis

    from atlas_tasks.config import AtlasSettings

#: Width used when stdout is not a terminal and ``COLUMNS`` is unset.
PIPED_WIDTH = 200
#: Queues a deployment needs consumed (a missing consumer fails the doctor) and the
#: optional ones (a warning: only deployments using jobs / Fly need them).
REQUIRED_QUEUES = (C.QUEUE_COMPUTE, C.QUEUE_MAINTENANCE)
OPTIONAL_QUEUES = (C.QUEUE_JOBS, C.QUEUE_FLY)
#: A sweep older than this many reap intervals fails the doctor (alert rule: the same).
STALE_SWEEP_INTERVALS = 3
#: The reaper's record of its last sweep (written by :mod:`atlas_tasks.tasks.reaper`).
LAST_SWEEP_KEY = "atlas:reaper:last-sweep"


def console() -> Console:
    """A console as wide as the terminal; when piped, ``COLUMNS`` or :data:`PIPED_WIDTH`."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    elif sys.stdout.isatty():
        width = shutil.get_terminal_size().columns
    else:
        width = PIPED_WIDTH
    # Built per call so click's CliRunner captures what is printed.
    return Console(width=width, soft_wrap=False)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    raise SystemExit(1)


def _ago(ms: int | None, now_ms: int) -> str:
    if not ms:
        return "-"
    seconds = max(0, now_ms - ms) / 1000
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


# --------------------------------------------------------------------------- sessions
@click.group()
def sessions() -> None:
    """Inspect and act on tracked sessions (any node; state is in Redis)."""


def _all_sessions() -> list[dict[str, Any]]:
    """Every tracked session's info plus its GPU (one pipelined read)."""
    from atlas_tasks.redis_conn import get_redis, wrap_redis_errors
    from atlas_tasks.sessions.store import SessionInfo, store_for

    @wrap_redis_errors("sessions list")
    def read() -> list[dict[str, Any]]:
        store = store_for(get_redis())
        ids = store.list_ids()
        out = []
        for record in store.get_many(ids) if ids else []:
            if record is None:
                continue  # ended between the two reads
            info = SessionInfo.from_record(record).model_dump(mode="json")
            info["gpu"] = record.gpu or None
            out.append(info)
        return out

    result: list[dict[str, Any]] = read()
    return result


@sessions.command("list")
@click.option("--user", "user", default=None, help="Only this user id (as given to spawn).")
@click.option("--status", default=None, help="spawning, running, terminating...")
@click.option("--provider", default=None, help="Only this provider.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def sessions_list(
    user: str | None, status: str | None, provider: str | None, as_json: bool
) -> None:
    """List tracked sessions, newest first."""
    try:
        rows = _all_sessions()
    except AtlasError as exc:
        _fail(str(exc))
    if user is not None:
        # user ids are any JSON value: compare their text, so 42 and "42" both match --user 42
        rows = [s for s in rows if str(s["user_id"]) == user or json.dumps(s["user_id"]) == user]
    if status:
        rows = [s for s in rows if s["status"] == status]
    if provider:
        rows = [s for s in rows if s["provider"] == provider]
    rows.sort(key=lambda s: s.get("created_at_ms") or 0, reverse=True)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    now_ms = int(time.time() * 1000)
    table = Table(title=f"{len(rows)} tracked session(s)")
    for column in (
        "id",
        "provider",
        "status",
        "user",
        "gpu",
        "compute",
        "idle ttl",
        "last activity",
        "created",
    ):
        table.add_column(column, no_wrap=column in ("id", "compute"))
    for s in rows:
        table.add_row(
            s["id"],
            s["provider"],
            s["status"],
            json.dumps(s["user_id"]),
            s.get("gpu") or "-",
            s.get("compute_id") or "-",
            f"{s['idle_ttl_ms'] / 1000:g}s",
            _ago(s.get("last_activity_ms"), now_ms),
            _ago(s.get("created_at_ms"), now_ms),
        )
    console().print(table)


@sessions.command("info")
@click.argument("session_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def sessions_info(session_id: str, as_json: bool) -> None:
    """Show one session (provider, status, pod, ports, activity)."""
    from atlas_tasks import orchestrator

    try:
        info = orchestrator.info(session_id).model_dump(mode="json")
    except AtlasError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    now_ms = int(time.time() * 1000)
    table = Table(title=f"session {session_id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in info.items():
        if key in ("created_at_ms", "last_activity_ms") and value:
            shown = f"{value} ({_ago(value, now_ms)})"
        elif key == "ports":
            shown = (
                ", ".join(
                    f"{p['internal']}/{p['protocol']} {p.get('url') or ''}".strip() for p in value
                )
                or "-"
            )
        else:
            shown = (
                "-"
                if value in (None, "", [])
                else (value if isinstance(value, str) else json.dumps(value))
            )
        table.add_row(key, str(shown))
    console().print(table)


@sessions.command("touch")
@click.argument("session_id")
def sessions_touch(session_id: str) -> None:
    """Record activity on a session (re-arms its idle clock)."""
    from atlas_tasks import orchestrator

    try:
        orchestrator.touch(session_id)
    except AtlasError as exc:
        _fail(str(exc))
    click.echo(f"touched {session_id}")


@sessions.command("stop")
@click.argument("session_id")
def sessions_stop(session_id: str) -> None:
    """Stop a session (durable: the reaper re-sends the terminate if it is lost)."""
    from atlas_tasks import orchestrator

    try:
        orchestrator.stop_tracked(session_id)
    except AtlasError as exc:
        _fail(str(exc))
    click.echo(f"stop requested for {session_id}")


# --------------------------------------------------------------------------- doctor
@dataclass
class Check:
    """One doctor check's verdict: ``status`` is ``ok``, ``warn`` or ``fail``."""

    name: str
    status: str
    detail: str


def _client(url: str) -> redis.Redis:
    from atlas_tasks.redis_conn import client_for_url

    # Short timeouts and no retries: the doctor must answer fast when Redis is down.
    return client_for_url(url, socket_connect_timeout=2, socket_timeout=3, decode_responses=True)


def run_checks(queue_timeout: float = 1.0) -> Iterator[Check]:
    """Every check, in order; later checks that need Redis are skipped when it is down."""
    import redis
    from pydantic import ValidationError as PydanticValidationError

    from atlas_tasks.config import get_settings, reset_settings

    reset_settings()
    try:
        settings = get_settings()
    except PydanticValidationError as exc:
        yield Check("settings", "fail", f"invalid ATLAS_* settings: {exc.errors()[0]['msg']}")
        return
    if settings.secret_key is None or not settings.secret_key.get_secret_value():
        yield Check(
            "settings",
            "fail",
            "ATLAS_SECRET_KEY is not set (spawn needs it; "
            "`atlas-tasks keygen` makes one, the same on every node)",
        )
    else:
        from atlas_tasks.sealing import seal

        try:
            seal({"doctor": True})
        except Exception as exc:  # a malformed key: never print it
            yield Check(
                "settings",
                "fail",
                f"ATLAS_SECRET_KEY is not a valid Fernet key ({type(exc).__name__})",
            )
        else:
            yield Check("settings", "ok", "valid; ATLAS_SECRET_KEY set")

    from atlas_tasks.redis_conn import redacted_url

    r = _client(settings.redis_url)
    try:
        r.ping()
        yield Check("redis", "ok", redacted_url(settings.redis_url))
    except redis.RedisError as exc:
        yield Check("redis", "fail", f"{redacted_url(settings.redis_url)}: {exc}")
        r = None  # type: ignore[assignment]

    broker = settings.effective_broker_url
    broker_ok = _check_broker(broker)
    yield Check(
        "broker",
        "ok" if broker_ok is None else "fail",
        redacted_url(broker) + ("" if broker_ok is None else f": {broker_ok}"),
    )
    if broker_ok is None:
        yield from _check_workers(queue_timeout)
    if r is not None:
        yield from _check_beat(r, _beat_client(settings, r), settings.reap_interval_ms)
        yield from _check_redis_config(r)
    yield from _check_providers(settings)


def _check_broker(url: str) -> str | None:
    from atlas_tasks.celery_app import get_app

    try:
        with get_app().connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0.2, timeout=3)
    except Exception as exc:  # kombu raises many kinds; each means "unreachable"
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_workers(timeout: float) -> Iterator[Check]:
    from atlas_tasks.celery_app import get_app
    from atlas_tasks.keyspace_names import keyspace

    ks = keyspace()  # queues are "<namespace>.compute"... outside the default namespace

    # One broadcast for every queue (queue_has_consumers asks once per queue).
    reply = get_app().control.inspect(timeout=timeout).active_queues() or {}
    consumers: dict[str, list[str]] = {}
    for worker, queues in reply.items():
        for q in queues or []:
            consumers.setdefault(str(q.get("name")), []).append(worker)
    for base in (*REQUIRED_QUEUES, *OPTIONAL_QUEUES):
        queue = ks.queue(base)
        workers = consumers.get(queue, [])
        if workers:
            yield Check(f"queue {queue}", "ok", f"consumed by {', '.join(sorted(workers))}")
        elif base in REQUIRED_QUEUES:
            yield Check(f"queue {queue}", "fail", "no worker consumes it (`atlas-tasks worker`)")
        else:
            yield Check(
                f"queue {queue}",
                "warn",
                "no worker consumes it (needed only for "
                f"{'serverless jobs' if base == C.QUEUE_JOBS else 'Fly.io ops'})",
            )


def _beat_client(settings: AtlasSettings, registry: redis.Redis) -> redis.Redis:
    """Where redbeat keeps its lock: the registry's Redis, or next to a Redis Cluster the
    result backend's (Celery and redbeat cannot use a cluster)."""
    from atlas_tasks.redis_conn import is_cluster_url

    if is_cluster_url(settings.redis_url):
        return _client(settings.effective_result_backend)
    return registry


def _check_beat(r: redis.Redis, beat_r: redis.Redis, reap_interval_ms: int) -> Iterator[Check]:
    import redis

    from atlas_tasks.keyspace_names import keyspace

    ks = keyspace()
    lock_key = ks.key(C.REDBEAT_KEY_PREFIX) + ":lock"
    try:
        pttl = int(beat_r.pttl(lock_key))
        raw = r.get(ks.key(LAST_SWEEP_KEY))
        secs, micros = r.time()
    except redis.RedisError as exc:
        yield Check("beat", "fail", f"could not read the beat lock: {exc}")
        return
    if pttl > 0 or pttl == -1:
        yield Check("beat lock", "ok", f"{lock_key} held")
    else:
        yield Check(
            "beat lock",
            "fail",
            f"{lock_key} is not held: no beat is running "
            "(`atlas-tasks beat`); idle sessions are not reaped",
        )
    limit_ms = max(STALE_SWEEP_INTERVALS * reap_interval_ms, 5_000)
    now_ms = int(secs) * 1000 + int(micros) // 1000
    at_ms = None
    if raw:
        try:
            at_ms = int(json.loads(raw)["at_ms"])
        except (ValueError, KeyError, TypeError):
            at_ms = None
    if at_ms is None:
        yield Check("last sweep", "fail", "the reaper never recorded a sweep")
    elif now_ms - at_ms > limit_ms:
        yield Check(
            "last sweep",
            "fail",
            f"{(now_ms - at_ms) / 1000:.0f}s ago (stale past "
            f"{limit_ms / 1000:g}s: {STALE_SWEEP_INTERVALS} reap intervals, "
            "at least 5s); is beat or the maintenance worker stuck?",
        )
    else:
        yield Check("last sweep", "ok", f"{(now_ms - at_ms) / 1000:.1f}s ago")


def _check_redis_config(r: redis.Redis) -> Iterator[Check]:
    import redis

    from atlas_tasks.celery_app import persistence_problem

    try:
        flags = str(r.config_get("notify-keyspace-events").get("notify-keyspace-events", ""))
    except redis.ResponseError:
        yield Check(
            "keyspace events",
            "warn",
            "CONFIG GET refused (managed Redis?): cannot tell; the sweep still reaps idle sessions",
        )
    else:
        if "E" in flags and ("x" in flags or "A" in flags):
            yield Check("keyspace events", "ok", f"notify-keyspace-events={flags!r}")
        else:
            yield Check(
                "keyspace events",
                "fail",
                f"notify-keyspace-events={flags!r} lacks "
                "'Ex': idle expiry is seen by the sweep only (workers set it at "
                "start unless ATLAS_KEYSPACE_EVENTS=false or CONFIG SET is refused)",
            )
    problem = persistence_problem(r)
    if problem is None:
        yield Check("persistence", "ok", "AOF on (or CONFIG refused: cannot tell)")
    elif "RDB snapshots only" in problem:
        yield Check("persistence", "warn", problem)
    else:
        yield Check("persistence", "fail", problem)


def _check_providers(settings: Any) -> Iterator[Check]:
    from atlas_tasks.providers.registry import get_provider

    names = list(
        dict.fromkeys(
            [
                *([settings.default_provider] if settings.default_provider else []),
                *settings.reap_providers,
            ]
        )
    )
    if not names:
        yield Check(
            "providers", "warn", "none configured (ATLAS_DEFAULT_PROVIDER, ATLAS_REAP_PROVIDERS)"
        )
    for name in names:
        try:
            provider = get_provider(name, cache=False)
            try:
                count = len(provider.list_compute())
            finally:
                provider.close()
        except AtlasError as exc:
            # The message never holds the key: providers redact it from errors.
            yield Check(f"provider {name}", "fail", f"{exc.kind}: {exc.message or exc}")
        except Exception as exc:  # a provider module that fails to import
            yield Check(f"provider {name}", "fail", f"{type(exc).__name__}: {exc}")
        else:
            yield Check(f"provider {name}", "ok", f"key valid ({count} pod(s) listed)")


_STYLE = {"ok": "green", "warn": "yellow", "fail": "bold red"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option(
    "--queue-timeout",
    default=1.0,
    show_default=True,
    type=float,
    help="Seconds to wait for workers to answer.",
)
def doctor(as_json: bool, queue_timeout: float) -> None:
    """Check a deployment: settings, Redis, broker, workers, beat, Redis config,
    provider keys. Exits 1 when any check fails."""
    checks = list(run_checks(queue_timeout))
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        click.echo(json.dumps([asdict(c) for c in checks], indent=2))
    else:
        table = Table(title="atlas-tasks doctor")
        table.add_column("check", style="bold", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("detail")
        for c in checks:
            table.add_row(c.name, f"[{_STYLE[c.status]}]{c.status}[/]", c.detail)
        out = console()
        out.print(table)
        out.print(f"{len(failed)} failed, {sum(c.status == 'warn' for c in checks)} warning(s)")
    if failed:
        raise SystemExit(1)


# --------------------------------------------------------------------------- metrics
@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9808, show_default=True, type=int)
def metrics(host: str, port: int) -> None:
    """Serve Prometheus metrics (read from Redis at each scrape) on http://HOST:PORT/."""
    from wsgiref.simple_server import make_server

    from atlas_tasks.metrics import metrics_wsgi_app

    app: Callable[..., Any] = metrics_wsgi_app()
    with make_server(host, port, app) as server:
        click.echo(f"serving metrics on http://{host}:{server.server_port}/metrics")
        server.serve_forever()


COMMANDS = (sessions, doctor, metrics)

__all__ = ["COMMANDS", "Check", "console", "doctor", "metrics", "run_checks", "sessions"]
