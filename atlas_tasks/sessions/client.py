"""Caller-side orchestrator API (web processes): spawn, touch, info, list, stop.

Nothing here calls a provider. ``spawn`` mints the session's secret, records the session
and a write-ahead intent in Redis and enqueues ``atlas.compute.spawn``; the rest are
Redis reads/writes (through :class:`~atlas_tasks.sessions.store.SessionStore` and its
asyncio twin) or enqueues. Any web node can serve any session: all state is in Redis.
Queues are chosen by the Celery app's ``task_routes``, never here.

Public names: :mod:`atlas_tasks.client`, re-exported as :mod:`atlas_tasks.orchestrator`.

Example (a Django view)::

    from atlas_tasks import orchestrator

    s = orchestrator.spawn(provider="runpod", gpu="h100", image="me/infer:latest",
                           ports=[(8000, "http")], auth="bearer", user_id=request.user.id,
                           idle_ttl_ms=15 * 60_000)
    compute = s.wait(timeout=120)          # or return s.id and follow events
    return JsonResponse({"session": s.id, "url": compute.ports[0].url, "token": s.token})

    # later, from the browser's heartbeat endpoint, on any node:
    orchestrator.touch(session_id)
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from typing import Any, cast

import redis

from atlas_tasks import constants as C
from atlas_tasks import events, task_reprs
from atlas_tasks.auth.tokens import mint_token, new_signing_secret
from atlas_tasks.config import get_settings, resolve_provider_name
from atlas_tasks.errors import (
    AtlasError,
    AtlasTimeoutError,
    NotTracked,
    TransportError,
    ValidationError,
)
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.providers import Provider, provider_class
from atlas_tasks.quotas.store import QuotaStore, check_id
from atlas_tasks.redis_conn import async_client_for_url, get_redis, wrap_redis_errors
from atlas_tasks.sealing import seal
from atlas_tasks.sessions.records import SessionRecord, SessionStatus, new_session_id
from atlas_tasks.sessions.store import (
    AsyncSessionStore,
    SessionInfo,
    SessionStore,
    canonical_user,
    store_for,
)
from atlas_tasks.specs import (
    AuthHandle,
    Capability,
    Compute,
    ComputeRequest,
    build_compute_request,
)
from atlas_tasks.specs.gpu import GPU_CATALOG, for_provider, lambda_instance_type

log = logging.getLogger(__name__)


class Session:
    """Handle on a tracked session, returned by :func:`spawn`.

    Attributes:
        id: session id, known before the pod exists; the key of every other call.
        token: the raw bearer token (``auth="bearer"``), handed out here once and never
            stored in Redis; ``None`` otherwise.
        signing_secret: the signed-URL secret (``auth="signed_url"``), else ``None``.
        provider: provider name.
        pod_name: the name the pod gets (prefix + session id).
    """

    def __init__(
        self,
        id: str,
        provider: str,
        pod_name: str,
        auth: str,
        token: str | None = None,
        signing_secret: str | None = None,
        token_hash: str | None = None,
    ) -> None:
        self.id = id
        self.provider = provider
        self.pod_name = pod_name
        self.auth = auth
        self.token = token
        self.signing_secret = signing_secret
        self._token_hash = token_hash

    def __repr__(self) -> str:  # never show the token
        return f"Session(id={self.id!r}, provider={self.provider!r}, auth={self.auth!r})"

    def wait(self, timeout: float = 120.0) -> Compute:
        """Block until the pod is running and return it (with the auth handle).

        Raises:
            AtlasError: the spawn failed (the provider's error kind and message).
            AtlasTimeoutError: not running within ``timeout`` seconds.
        """
        return self._compute(_running_compute(self.id, timeout))

    def _compute(self, data: dict[str, Any]) -> Compute:
        data = dict(data)
        data.pop("auth", None)
        compute = Compute.model_validate(data)
        if self.auth == "bearer":
            compute.auth = AuthHandle(
                scheme="bearer",
                token=self.token,
                hash=self._token_hash,
                header=f"Authorization: Bearer {self.token}",
            )
        elif self.auth == "signed_url":
            compute.auth = AuthHandle(scheme="signed_url", token=self.signing_secret)
        return compute

    def touch(self) -> None:
        """Shortcut for :func:`touch` on this session."""
        touch(self.id)

    def info(self) -> SessionInfo:
        """Shortcut for :func:`info` on this session."""
        return info(self.id)

    def stop(self) -> None:
        """Shortcut for :func:`stop_tracked` on this session."""
        stop_tracked(self.id)


def _store() -> SessionStore:
    return store_for(get_redis(), publish_heartbeats=get_settings().heartbeat_events)


def _provider_name(provider: Any) -> str:
    resolved = resolve_provider_name(provider)
    if isinstance(resolved, Provider) or (
        isinstance(resolved, type) and issubclass(resolved, Provider)
    ):
        # Workers rebuild providers by name, so it must be registered there too.
        name = resolved.name
    else:
        name = str(resolved)
    provider_class(name)  # unknown names fail here, naming the known ones
    return name


#: Providers the GPU catalog describes (others, e.g. ``mock`` or custom ones, decide alone).
_CATALOGUED = frozenset(p for ids in GPU_CATALOG.values() for p in ids)


def _check_gpu_offered(provider: str, req: ComputeRequest) -> None:
    """Refuse at once a GPU (or, on Lambda, a GPU count) the provider does not sell, as
    ``spawn_compute`` does, instead of accepting the session and failing in the worker.

    Raises:
        ValidationError: field ``gpu`` (or ``gpu_count``), naming what the provider offers.
    """
    if not req.gpu or provider not in _CATALOGUED:
        return
    if provider == "lambda_labs":
        lambda_instance_type(req.gpu, req.gpu_count)
    else:
        for_provider(req.gpu, provider)


def _positive_int(field: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValidationError(f"{field}: must be an integer > 0, got {value!r}", field=field)
    return value


def _gpu_idle_options(
    provider: str, below_pct: Any, window_ms: Any
) -> tuple[float | None, int | None]:
    """Validated GPU-idle reaping options of one spawn (both or neither).

    Raises:
        ValidationError: naming the field: out of range, only one of the two, or a
            provider that does not report GPU utilisation (``Capability.GPU_UTILIZATION``).
    """
    if below_pct is None and window_ms is None:
        return None, None
    if below_pct is None or window_ms is None:
        missing = "gpu_idle_below_pct" if below_pct is None else "gpu_idle_window_ms"
        raise ValidationError(
            f"{missing}: gpu_idle_below_pct and gpu_idle_window_ms go "
            "together (give both or neither)",
            field=missing,
        )
    if (
        isinstance(below_pct, bool)
        or not isinstance(below_pct, int | float)
        or not 0 < below_pct <= 100
    ):
        raise ValidationError(
            f"gpu_idle_below_pct: must be a number in (0, 100], got {below_pct!r}",
            field="gpu_idle_below_pct",
        )
    window = _positive_int("gpu_idle_window_ms", window_ms)
    if str(Capability.GPU_UTILIZATION) not in provider_class(provider).capabilities():
        raise ValidationError(
            f"gpu_idle_below_pct: provider {provider!r} does not report GPU "
            "utilisation, so GPU-idle reaping cannot apply to it",
            field="gpu_idle_below_pct",
        )
    return float(below_pct), window


def _quota_user(user_id: Any) -> str | None:
    """The id a user's quotas are kept under: a str/int id as is, any other JSON value as
    its compact canonical JSON (``{"team":3,"user":9}``).

    ``None`` (no user quota) for no user, and for an id that cannot name a quota scope
    (blank, whitespace, over 200 characters): ``quotas.set_limits`` refuses such an id,
    so it can have no limits, and ``user_id`` has always accepted any JSON value.
    """
    if user_id is None:
        return None
    if isinstance(user_id, str | int) and not isinstance(user_id, bool):
        text: str | int = user_id
    else:
        text = json.dumps(user_id, sort_keys=True, separators=(",", ":"))
    try:
        return check_id("user_id", text)
    except ValidationError:
        return None


@wrap_redis_errors("spawn")
def spawn(
    request: ComputeRequest | dict[str, Any] | None = None,
    *,
    provider: str | type[Provider] | Provider | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    user_id: Any = None,
    tenant_id: str | int | None = None,
    max_lifetime_ms: int | None = None,
    gpu_idle_below_pct: float | None = None,
    gpu_idle_window_ms: int | None = None,
    **fields: Any,
) -> Session:
    """Start a tracked session: returns at once; a worker creates the pod.

    Args:
        request: a :class:`ComputeRequest` or dict; keyword ``fields`` override it.
        provider: provider name (argument > ``ATLAS_DEFAULT_PROVIDER``).
        api_key: per-call API key; travels and rests Fernet-sealed.
        base_url: per-call provider base URL (e.g. a fake cloud).
        user_id: your user's id (any JSON value), kept in the record for ``info``; its
            quotas (:mod:`atlas_tasks.quotas`) are checked and reserved at admission.
        tenant_id: your tenant's id; its quotas are checked and reserved too.
        max_lifetime_ms: hard lifetime: the session ends (reason ``max_lifetime``) this
            long after this call, touched or not, after an ``expiring`` event
            ``ATLAS_EXPIRY_WARNING_MS`` before (default ``ATLAS_DEFAULT_MAX_LIFETIME_MS``,
            0 = none).
        gpu_idle_below_pct, gpu_idle_window_ms: GPU-idle reaping (both or neither): the
            running session ends when every GPU stays below this utilisation for this
            long. Only for providers declaring ``Capability.GPU_UTILIZATION``.
        **fields: ComputeRequest fields: ``gpu``, ``image``, ``ports``, ``auth``,
            ``idle_ttl_ms``...

    Raises:
        ValidationError: bad request fields (``idle_ttl_ms`` below ``ATLAS_MIN_IDLE_TTL_MS``
            included), unknown provider, or no ``ATLAS_SECRET_KEY``.
        QuotaExceeded: a user or tenant limit refused the session; nothing was recorded,
            reserved or enqueued.
        TransportError: Redis or the broker could not be reached (nothing is left behind).
    """
    settings = get_settings()
    req = build_compute_request(request, **fields)
    name = _provider_name(provider)
    _check_gpu_offered(name, req)
    try:
        json.dumps(user_id, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise ValidationError("user_id: must be JSON-serialisable", field="user_id") from None
    quota_user = _quota_user(user_id)
    tenant = None if tenant_id is None else check_id("tenant_id", tenant_id)
    if max_lifetime_ms is None:
        lifetime = settings.default_max_lifetime_ms or None
    else:
        lifetime = _positive_int("max_lifetime_ms", max_lifetime_ms)
    idle_pct, idle_window = _gpu_idle_options(name, gpu_idle_below_pct, gpu_idle_window_ms)
    for arg, value in (("api_key", api_key), ("base_url", base_url)):
        if value is not None and not isinstance(value, str):
            raise ValidationError(f"{arg}: must be a string", field=arg)
    idle_ttl_ms = req.idle_ttl_ms or settings.default_idle_ttl_ms
    if idle_ttl_ms < settings.min_idle_ttl_ms:
        # A clock shorter than a heartbeat round trip reaps the session at once.
        raise ValidationError(
            f"idle_ttl_ms: {idle_ttl_ms} is below the minimum of {settings.min_idle_ttl_ms} ms "
            "(ATLAS_MIN_IDLE_TTL_MS)",
            field="idle_ttl_ms",
        )
    session_id = new_session_id()
    pod_name = f"{settings.reap_name_prefix}{session_id}"
    token = signing = token_hash = None
    if req.auth == "bearer":
        minted = mint_token()
        token, token_hash = minted.token, minted.hash
    elif req.auth == "signed_url":
        signing = new_signing_secret()
    wire_request = req.model_copy(update={"name": pod_name, "idle_ttl_ms": idle_ttl_ms})
    sealed = seal({"request": wire_request.model_dump(mode="json"), "secret": token or signing})
    record = SessionRecord(
        id=session_id,
        provider=name,
        status=SessionStatus.SPAWNING,
        pod_name=pod_name,
        label=req.name or "",
        user_id=user_id,
        idle_ttl_ms=idle_ttl_ms,
        auth=req.auth,
        token_hash=token_hash or "",
        base_url=base_url or "",
        gpu=req.gpu or "",
        image=req.image or "",
        api_key_sealed=seal({"api_key": api_key}) if api_key else None,
        # Kept (sealed) only while the spawn is in flight, so the reaper can re-send a
        # spawn message the broker lost; removed when the spawn finishes or fails.
        spawn_sealed=sealed,
        tenant_id=tenant,
        max_lifetime_ms=lifetime,
        gpu_idle_below_pct=idle_pct,
        gpu_idle_window_ms=idle_window,
    )
    store = _store()
    admitted = False
    if quota_user is not None or tenant is not None:
        # Admission before anything exists: a refusal (QuotaExceeded) leaves nothing behind.
        quotas = QuotaStore(store.r, namespace=store.ks.namespace)
        price = (
            quotas.quote(name, req.gpu, req.gpu_count, spot=req.spot).hourly_usd
            if req.gpu
            else None
        )
        admission = quotas.try_admit(
            session_id, user_id=quota_user, tenant_id=tenant, hourly_usd=price
        )
        if admission.refusal is not None:
            raise admission.refusal.error()
        admitted = True
    try:
        # From here on the session's end releases its reservation (store Lua).
        store.create(record, expiry_warning_ms=settings.expiry_warning_ms)
    except BaseException:
        if admitted:
            _release_quietly(store, session_id)
        raise  # a Redis failure: TransportError (decorator)
    events.publish(
        session_id,
        "status",
        {"status": SessionStatus.SPAWNING.value, "provider": name, "user_id": user_id},
    )
    from atlas_tasks.celery_app import get_app

    app = get_app()

    try:
        app.send_task(
            C.TASK_SPAWN,
            args=[session_id, sealed],
            task_id=f"atlas-spawn-{session_id}",
            **task_reprs.spawn(session_id, provider=name, gpu=req.gpu, user_id=user_id),
        )
    except Exception as exc:
        error = {"kind": "transport", "message": f"could not enqueue the spawn: {exc}"}
        try:
            # Publishes the ``failed`` event in the same step (one event, not two).
            store.fail_spawn(session_id, error)
        except redis.RedisError as redis_exc:
            # Broker and registry share Redis and both are down: the intent stays and
            # the reaper resolves it (nothing was created), so only log this one.
            log.warning(
                "session %s: could not record the failed enqueue: %s", session_id, redis_exc
            )
        raise TransportError(error["message"]) from exc
    return Session(
        session_id,
        name,
        pod_name,
        req.auth,
        token=token,
        signing_secret=signing,
        token_hash=token_hash,
    )


def _release_quietly(store: SessionStore, session_id: str) -> None:
    """Give back the reservation of a session whose record could not be written."""
    try:
        QuotaStore(store.r, namespace=store.ks.namespace).release(session_id)
    except redis.RedisError as exc:  # Redis is down: atlas.quotas.refresh_prices releases it later
        log.warning("session %s: could not release its quota reservation: %s", session_id, exc)


@wrap_redis_errors("touch")
def touch(session_id: str) -> None:
    """Record activity: re-arms the idle clock. One Redis round trip.

    Raises:
        NotTracked: unknown, terminating or terminated session.
        TransportError: Redis could not be reached.
    """
    _store().touch(session_id)


@wrap_redis_errors("info")
def info(session_id: str) -> SessionInfo:
    """Provider, compute id, ports/URLs, user id, idle TTL, last activity and status.

    Raises:
        NotTracked: unknown session (or its record expired after termination).
        TransportError: Redis could not be reached.
    """
    return _store().info(session_id)


@wrap_redis_errors("list_ids")
def list_ids() -> list[str]:
    """Ids of every tracked session across the cluster (spawning, running, terminating).

    Raises:
        TransportError: Redis could not be reached.
    """
    return _store().list_ids()


@wrap_redis_errors("stop_tracked")
def stop_tracked(session_id: str) -> None:
    """Stop a tracked session (idempotent); durable once it returns.

    The stop is first recorded in Redis (``stop_requested_at_ms`` plus an entry in the
    stop index, one Lua call), then the terminate is enqueued. If that message is lost
    (broker failover, a worker dying at the wrong moment) or cannot be sent at all, the
    reaper re-sends it after ``ATLAS_STOP_RESEND_MS``; duplicates are harmless because
    terminate is fenced and idempotent.

    Raises:
        NotTracked: unknown session.
        TransportError: Redis could not be reached (nothing was recorded).
    """
    settings = get_settings()
    verdict = _store().request_stop(session_id, "requested", settings.stop_resend_ms)
    if verdict in ("terminated", "failed"):
        return  # already over: stopping again is a no-op
    if verdict != "ok":
        raise NotTracked(f"session {session_id!r} is not tracked")
    from atlas_tasks.celery_app import get_app

    app = get_app()

    try:
        app.send_task(C.TASK_TERMINATE, args=[session_id, "requested"])
    except Exception as exc:
        # Recorded above: the reaper re-sends it, so the caller's stop is not lost.
        log.warning(
            "session %s: stop recorded but not enqueued (%s); the reaper re-sends it within %d ms",
            session_id,
            exc,
            settings.stop_resend_ms,
        )


# ---------------------------------------------------------------- waiting by id, listing
def _raise_not_running(session_id: str, timeout: float) -> None:
    """The timeout error of wait()/await_running(), saying when no worker consumes the
    ``compute`` queue (the usual cause: a worker started with other ``-Q`` queues, or a
    host Celery app that did not :func:`~atlas_tasks.celery_app.attach` us)."""
    from atlas_tasks.celery_app import queue_has_consumers

    queue = keyspace().queue(C.QUEUE_COMPUTE)  # "<namespace>.compute" outside "atlas"
    try:
        consumed = queue_has_consumers(queue, timeout=1.0)
    except Exception:  # the broker is down too: the plain timeout says enough
        consumed = True
    hint = (
        ""
        if consumed
        else (
            f"; no worker consumes the {queue!r} queue (start one with "
            f"`atlas-tasks worker`, or `-Q {queue},...` on your own worker after "
            "atlas_tasks.celery_app.attach(app))"
        )
    )
    raise AtlasTimeoutError(f"session {session_id} not running after {timeout:g}s{hint}")


def _outcome(session_id: str, event: events.Event) -> dict[str, Any] | None:
    """The compute data of a ``running`` event; raises on ``failed``/``terminated``."""
    status = event.data.get("status")
    if event.type != "status":
        return None
    if status == "running":
        return cast(dict[str, Any], event.data.get("compute") or {})
    if status == "failed":
        raise AtlasError.from_dict(event.data.get("error") or {})
    if status == "terminated":
        raise AtlasError(f"session {session_id} ended before it was running", kind="not_found")
    return None


def _running_compute(session_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    for event in events.subscribe(
        session_id, timeout=timeout, until=("running", "failed", "terminated")
    ):
        data = _outcome(session_id, event)
        if data is not None:
            return data
        if time.monotonic() > deadline:
            break
    _raise_not_running(session_id, timeout)
    raise AssertionError("unreachable")  # pragma: no cover


def _plain_compute(data: dict[str, Any]) -> Compute:
    data = dict(data)
    data.pop("auth", None)  # the raw secret was handed out once, at spawn
    return Compute.model_validate(data)


def wait(session_id: str, timeout: float = 120.0) -> Compute:
    """Block until session ``session_id`` is running and return its pod (without the
    auth handle: the token was returned once, by :func:`spawn`).

    For a later request that only has the id; :meth:`Session.wait` is the same with the
    handle.

    Raises:
        AtlasError: the spawn failed (the provider's error kind and message) or the
            session ended first (``not_found``).
        AtlasTimeoutError: not running within ``timeout`` seconds (the message says when
            no worker consumes the ``compute`` queue).
        TransportError: Redis could not be reached.
    """
    return _plain_compute(_running_compute(session_id, timeout))


def _records_to_infos(records: list[SessionRecord | None]) -> list[SessionInfo]:
    return [SessionInfo.from_record(r) for r in records if r is not None and r.id]


@wrap_redis_errors("list_sessions")
def list_sessions(user_id: Any = None, *, offset: int = 0, limit: int = 100) -> list[SessionInfo]:
    """Sessions of one user (``user_id`` as given to :func:`spawn`), newest first.

    Backed by a per-user index in Redis: one round trip per page. With ``user_id=None``,
    every tracked session of the cluster (spawning, running, terminating), newest first.

    Raises:
        ValidationError: ``offset``/``limit`` out of range, or a non-JSON ``user_id``.
        TransportError: Redis could not be reached.
    """
    _check_page(offset, limit)
    store = _store()
    if user_id is None:
        infos = _records_to_infos(store.get_many(store.list_ids()))
        infos.sort(key=lambda i: i.created_at_ms or 0, reverse=True)
        return infos[offset : offset + limit]
    return _records_to_infos(
        list(store.list_user_records(_user_json(user_id), offset=offset, limit=limit))
    )


def _check_page(offset: int, limit: int) -> None:
    if not isinstance(offset, int) or offset < 0:
        raise ValidationError("offset: must be an integer >= 0", field="offset")
    if not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise ValidationError("limit: must be an integer from 1 to 1000", field="limit")


def _user_json(user_id: Any) -> str:
    try:
        return canonical_user(user_id)
    except (TypeError, ValueError, RecursionError):
        raise ValidationError("user_id: must be JSON-serialisable", field="user_id") from None


# ---------------------------------------------------------------- asyncio client
# redis.asyncio clients belong to the event loop that created them: one per (loop, URL).
_astores: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, bool, str], AsyncSessionStore]
] = weakref.WeakKeyDictionary()


def _astore() -> AsyncSessionStore:
    settings = get_settings()
    loop = asyncio.get_running_loop()
    per_loop = _astores.setdefault(loop, {})
    key = (settings.redis_url, settings.heartbeat_events, settings.namespace)
    store = per_loop.get(key)
    if store is None:
        client = async_client_for_url(
            settings.redis_url,
            decode_responses=True,
            max_connections=settings.redis_max_connections,
        )
        store = per_loop[key] = AsyncSessionStore(
            client, publish_heartbeats=settings.heartbeat_events, namespace=settings.namespace
        )
    return store


async def aspawn(request: ComputeRequest | dict[str, Any] | None = None, **kwargs: Any) -> Session:
    """asyncio twin of :func:`spawn` (same arguments and errors).

    Runs :func:`spawn` in a thread: the broker publish goes through kombu, which has no
    asyncio client, and a spawn is two short round trips, so a thread beats a second
    implementation of the write-ahead record.
    """
    return await asyncio.to_thread(spawn, request, **kwargs)


@wrap_redis_errors("atouch")
async def atouch(session_id: str) -> None:
    """asyncio twin of :func:`touch`: one round trip on a running session.

    Raises:
        NotTracked: unknown, terminating or terminated session.
        TransportError: Redis could not be reached.
    """
    await _astore().touch(session_id)


@wrap_redis_errors("ainfo")
async def ainfo(session_id: str) -> SessionInfo:
    """asyncio twin of :func:`info`.

    Raises:
        NotTracked: unknown session (or its record expired after termination).
        TransportError: Redis could not be reached.
    """
    return await _astore().info(session_id)


async def astop_tracked(session_id: str) -> None:
    """asyncio twin of :func:`stop_tracked` (in a thread: the enqueue goes through kombu).

    Raises:
        NotTracked: unknown session.
        TransportError: Redis could not be reached.
    """
    await asyncio.to_thread(stop_tracked, session_id)


@wrap_redis_errors("alist_sessions")
async def alist_sessions(
    user_id: Any = None, *, offset: int = 0, limit: int = 100
) -> list[SessionInfo]:
    """asyncio twin of :func:`list_sessions` (one round trip per page for a user)."""
    _check_page(offset, limit)
    if user_id is None:
        return await asyncio.to_thread(list_sessions, None, offset=offset, limit=limit)
    records = await _astore().list_user_records(_user_json(user_id), offset=offset, limit=limit)
    return _records_to_infos(list(records))


async def await_running(session_id: str, timeout: float = 120.0) -> Compute:
    """asyncio twin of :func:`wait`: awaits the ``running`` event without a thread.

    Raises:
        AtlasError: the spawn failed or the session ended first (``not_found``).
        AtlasTimeoutError: not running within ``timeout`` seconds (the message says when
            no worker consumes the ``compute`` queue).
        TransportError: Redis could not be reached.
    """
    deadline = time.monotonic() + timeout
    async for event in events.asubscribe(
        session_id, timeout=timeout, until=("running", "failed", "terminated")
    ):
        data = _outcome(session_id, event)
        if data is not None:
            return _plain_compute(data)
        if time.monotonic() > deadline:
            break
    await asyncio.to_thread(_raise_not_running, session_id, timeout)
    raise AssertionError("unreachable")  # pragma: no cover


__all__ = [
    "NotTracked",
    "Session",
    "SessionInfo",
    "ainfo",
    "alist_sessions",
    "aspawn",
    "astop_tracked",
    "atouch",
    "await_running",
    "info",
    "list_ids",
    "list_sessions",
    "spawn",
    "stop_tracked",
    "touch",
    "wait",
]
