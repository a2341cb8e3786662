"""Caller-side orchestrator API (web processes): spawn, touch, info, list, stop.

Nothing here calls a provider. ``spawn`` mints the session's secret, records the session
and a write-ahead intent in Redis and enqueues ``atlas.compute.spawn``; the rest are
Redis reads/writes or enqueues. Any web node can serve any session: all state is in Redis.

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

import json
import logging
import secrets
import time
from typing import Any

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
from atlas_tasks.providers import Provider, provider_class
from atlas_tasks.redis_conn import get_redis, wrap_redis_errors
from atlas_tasks.registry import SessionInfo, SessionRegistry, registry_for
from atlas_tasks.sealing import seal
from atlas_tasks.specs import AuthHandle, Compute, ComputeRequest, build_compute_request

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

    def __init__(self, id: str, provider: str, pod_name: str, auth: str,
                 token: str | None = None, signing_secret: str | None = None,
                 token_hash: str | None = None) -> None:
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
        deadline = time.monotonic() + timeout
        for event in events.subscribe(self.id, timeout=timeout,
                                      until=("running", "failed", "terminated")):
            status = event.data.get("status")
            if event.type == "status" and status == "running":
                return self._compute(event.data.get("compute") or {})
            if event.type == "status" and status == "failed":
                raise AtlasError.from_dict(event.data.get("error") or {})
            if event.type == "status" and status == "terminated":
                raise AtlasError(f"session {self.id} ended before it was running",
                                 kind="not_found")
            if time.monotonic() > deadline:
                break
        raise AtlasTimeoutError(f"session {self.id} not running after {timeout:g}s")

    def _compute(self, data: dict[str, Any]) -> Compute:
        data = dict(data)
        data.pop("auth", None)
        compute = Compute.model_validate(data)
        if self.auth == "bearer":
            compute.auth = AuthHandle(scheme="bearer", token=self.token, hash=self._token_hash,
                                      header=f"Authorization: Bearer {self.token}")
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


def _registry() -> SessionRegistry:
    return registry_for(get_redis(), publish_heartbeats=get_settings().heartbeat_events)


def _provider_name(provider: Any) -> str:
    resolved = resolve_provider_name(provider)
    if isinstance(resolved, Provider) or (isinstance(resolved, type)
                                          and issubclass(resolved, Provider)):
        # Workers rebuild providers by name, so it must be registered there too.
        name = resolved.name
    else:
        name = str(resolved)
    provider_class(name)  # unknown names fail here, naming the known ones
    return name


@wrap_redis_errors("spawn")
def spawn(
    request: ComputeRequest | dict[str, Any] | None = None,
    *,
    provider: str | type[Provider] | Provider | None = None,
    api_key: str | None = None,
    base_url: str | None = None,
    user_id: Any = None,
    **fields: Any,
) -> Session:
    """Start a tracked session: returns at once; a worker creates the pod.

    Args:
        request: a :class:`ComputeRequest` or dict; keyword ``fields`` override it.
        provider: provider name (argument > ``ATLAS_DEFAULT_PROVIDER``).
        api_key: per-call API key; travels and rests Fernet-sealed.
        base_url: per-call provider base URL (e.g. a fake cloud).
        user_id: your user's id (any JSON value), kept in the record for ``info``.
        **fields: ComputeRequest fields: ``gpu``, ``image``, ``ports``, ``auth``,
            ``idle_ttl_ms``...

    Raises:
        ValidationError: bad request fields (``idle_ttl_ms`` below ``ATLAS_MIN_IDLE_TTL_MS``
            included), unknown provider, or no ``ATLAS_SECRET_KEY``.
        TransportError: Redis or the broker could not be reached (nothing is left behind).
    """
    settings = get_settings()
    req = build_compute_request(request, **fields)
    name = _provider_name(provider)
    try:
        json.dumps(user_id, allow_nan=False)
    except (TypeError, ValueError, RecursionError):
        raise ValidationError("user_id: must be JSON-serialisable", field="user_id") from None
    for arg, value in (("api_key", api_key), ("base_url", base_url)):
        if value is not None and not isinstance(value, str):
            raise ValidationError(f"{arg}: must be a string", field=arg)
    idle_ttl_ms = req.idle_ttl_ms or settings.default_idle_ttl_ms
    if idle_ttl_ms < settings.min_idle_ttl_ms:
        # A clock shorter than a heartbeat round trip reaps the session at once.
        raise ValidationError(
            f"idle_ttl_ms: {idle_ttl_ms} is below the minimum of {settings.min_idle_ttl_ms} ms "
            "(ATLAS_MIN_IDLE_TTL_MS)", field="idle_ttl_ms")
    session_id = secrets.token_hex(8)
    pod_name = f"{settings.reap_name_prefix}{session_id}"
    token = signing = token_hash = None
    if req.auth == "bearer":
        minted = mint_token()
        token, token_hash = minted.token, minted.hash
    elif req.auth == "signed_url":
        signing = new_signing_secret()
    wire_request = req.model_copy(update={"name": pod_name, "idle_ttl_ms": idle_ttl_ms})
    sealed = seal({"request": wire_request.model_dump(mode="json"), "secret": token or signing})
    record = {
        "id": session_id,
        "provider": name,
        "status": "spawning",
        "pod_name": pod_name,
        "label": req.name or "",
        "user_id": json.dumps(user_id),
        "idle_ttl_ms": str(idle_ttl_ms),
        "auth": req.auth,
        "token_hash": token_hash or "",
        "base_url": base_url or "",
        "gpu": req.gpu or "",
        "image": req.image or "",
    }
    if api_key:
        record["api_key_sealed"] = seal({"api_key": api_key})
    # Kept (sealed) only while the spawn is in flight, so the reaper can re-send a spawn
    # message the broker lost; removed when the spawn finishes or fails.
    record["spawn_sealed"] = sealed
    registry = _registry()
    registry.create(session_id, record)  # a Redis failure: TransportError (decorator)
    events.publish(session_id, "status", {"status": "spawning", "provider": name,
                                          "user_id": user_id})
    from atlas_tasks.celery_app import get_app
    app = get_app()

    try:
        app.send_task(C.TASK_SPAWN, args=[session_id, sealed], task_id=f"atlas-spawn-{session_id}",
                      queue=C.QUEUE_COMPUTE, **task_reprs.spawn(session_id, provider=name,
                                                                gpu=req.gpu, user_id=user_id))
    except Exception as exc:
        error = {"kind": "transport", "message": f"could not enqueue the spawn: {exc}"}
        try:
            registry.fail_spawn(session_id, error)
        except redis.RedisError as redis_exc:
            # Broker and registry share Redis and both are down: the intent stays and
            # the reaper resolves it (nothing was created), so only log this one.
            log.warning("session %s: could not record the failed enqueue: %s", session_id,
                        redis_exc)
        events.publish(session_id, "status", {"status": "failed", "error": error})
        raise TransportError(error["message"]) from exc
    return Session(session_id, name, pod_name, req.auth, token=token, signing_secret=signing,
                   token_hash=token_hash)


@wrap_redis_errors("touch")
def touch(session_id: str) -> None:
    """Record activity: re-arms the idle clock. One Redis round trip.

    Raises:
        NotTracked: unknown, terminating or terminated session.
        TransportError: Redis could not be reached.
    """
    _registry().touch(session_id)


@wrap_redis_errors("info")
def info(session_id: str) -> SessionInfo:
    """Provider, compute id, ports/URLs, user id, idle TTL, last activity and status.

    Raises:
        NotTracked: unknown session (or its record expired after termination).
        TransportError: Redis could not be reached.
    """
    return _registry().info(session_id)


@wrap_redis_errors("list_ids")
def list_ids() -> list[str]:
    """Ids of every tracked session across the cluster (spawning, running, terminating).

    Raises:
        TransportError: Redis could not be reached.
    """
    return _registry().list_ids()


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
    verdict = _registry().request_stop(session_id, "requested", settings.stop_resend_ms)
    if verdict in ("terminated", "failed"):
        return  # already over: stopping again is a no-op
    if verdict != "ok":
        raise NotTracked(f"session {session_id!r} is not tracked")
    from atlas_tasks.celery_app import get_app
    app = get_app()

    try:
        app.send_task(C.TASK_TERMINATE, args=[session_id, "requested"], queue=C.QUEUE_COMPUTE)
    except Exception as exc:
        # Recorded above: the reaper re-sends it, so the caller's stop is not lost.
        log.warning("session %s: stop recorded but not enqueued (%s); the reaper re-sends it "
                    "within %d ms", session_id, exc, settings.stop_resend_ms)


__all__ = ["NotTracked", "Session", "SessionInfo", "info", "list_ids", "spawn",
           "stop_tracked", "touch"]
