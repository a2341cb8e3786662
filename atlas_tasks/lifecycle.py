"""Worker-side logic of a tracked session: spawn, terminate, orphan terminate.

No Celery here: the thin tasks in :mod:`atlas_tasks.tasks` call these functions and
decide about retries. Every function is idempotent, because Celery may deliver a task
twice (late ack + redelivery on worker loss) and the reaper may enqueue duplicates:

* spawn: a write-ahead intent exists before the provider call; a second attempt looks
  the pod up by its name (``<prefix><session id>``) before creating, so one session never
  gets two pods.
* terminate: a fence (``SET NX``) lets one terminate at a time talk to the provider; a
  confirmed or 404 answer ends the session; a crash leaves the session due again in the
  deadline index, so the reaper retries it.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from atlas_tasks import events
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.constants import IDLE_BATCH_THREADS, TERMINATE_FENCE_TTL_MS
from atlas_tasks.errors import AtlasError, NotFoundError, NotTracked
from atlas_tasks.faults import fault_point
from atlas_tasks.providers import Provider, get_provider
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.registry import SessionRegistry, registry_for
from atlas_tasks.sealing import unseal
from atlas_tasks.specs import Compute, ComputeRequest

log = logging.getLogger(__name__)

#: Error kinds worth retrying: the next attempt may well succeed.
TRANSIENT_KINDS = frozenset({"rate_limited", "transport", "provider", "timeout", "unknown"})


def is_transient(error: BaseException) -> bool:
    """Whether a retry could help (429, 5xx, transport, timeouts; not 4xx validation/auth)."""
    if isinstance(error, AtlasError):
        if error.kind == "provider" and error.status is not None and 400 <= error.status < 500:
            return False
        return error.kind in TRANSIENT_KINDS
    return False


def registry(settings: AtlasSettings | None = None) -> SessionRegistry:
    """The session registry on ``ATLAS_REDIS_URL``."""
    settings = settings or get_settings()
    return registry_for(get_redis(settings.redis_url))


def provider_for(record: dict[str, str]) -> Provider:
    """Build the provider a session was spawned on, with its per-call key if any."""
    api_key = None
    if record.get("api_key_sealed"):
        api_key = unseal(record["api_key_sealed"]).get("api_key")
    return get_provider(record["provider"], api_key=api_key,
                        base_url=record.get("base_url") or None)


def public_compute(compute: Compute) -> dict[str, Any]:
    """The JSON-safe view of a compute kept in Redis and returned by tasks: no raw
    secret (the auth handle keeps only its scheme) and no provider ``raw`` body."""
    data = compute.model_dump(mode="json", exclude={"raw", "auth"})
    data["auth"] = compute.auth.scheme if compute.auth else "none"
    return data


def spawn_lease_ms(settings: AtlasSettings | None = None) -> int:
    """How long one spawn attempt holds its session's lease (< the stall re-send time)."""
    settings = settings or get_settings()
    return max(1_000, min(90_000, settings.spawn_stall_ms * 3 // 4))


def spawn_session(session_id: str, sealed: str, *, attempt_id: str) -> dict[str, Any]:
    """Create (or adopt) the pod of a session and start its idle clock.

    Args:
        session_id: the tracked session.
        sealed: the Fernet-sealed request and secret.
        attempt_id: the spawn task's id; it owns the session's spawn lease (a redelivery of
            the same task keeps it, a re-sent spawn waits for it).

    Returns the public compute dict. Raises :class:`AtlasError` for the task to retry or
    fail; the registry is left in ``spawning`` with its intent, so nothing is lost.
    """
    reg = registry()
    record = reg.get(session_id)
    if not record:
        raise NotTracked(f"session {session_id!r} is not tracked (record missing)")
    status = record.get("status")
    provider = provider_for(record)
    pod_name = record["pod_name"]
    if status == "running" and record.get("compute_id"):
        compute_json: dict[str, Any] = json.loads(record.get("compute") or "{}")
        return compute_json  # redelivered after success
    if status in ("failed", "terminated"):
        _terminate_by_name(provider, pod_name)  # a late redelivery must not leave a pod
        return {"id": record.get("compute_id"), "status": status}
    if status == "terminating" and not record.get("compute_id"):
        # Stopped before its pod existed: make sure none exists, then end the session
        # here (its terminate deferred to this spawn).
        _terminate_by_name(provider, pod_name)
        reg.finish_terminate(session_id, record.get("reason") or "requested")
        return {"id": None, "status": "terminated"}

    attempt = reg.start_spawn(session_id, attempt_id, spawn_lease_ms())
    if attempt < 0:
        log.info("session %s: another spawn attempt holds the lease; leaving it", session_id)
        return {"id": None, "status": "spawning"}
    payload = unseal(sealed)
    request = ComputeRequest.model_validate(payload["request"])
    existing = provider.find_compute_by_name(pod_name) if attempt > 1 else None
    if existing is not None:
        log.info("session %s: adopting pod %s found by name after a retry", session_id,
                 existing.id)
        compute = existing
    else:
        compute = provider.spawn_compute(request, secret=payload.get("secret"))
    fault_point("after_create")
    public = public_compute(compute)
    verdict = reg.finish_spawn(session_id, compute.id, public)
    reg.release_spawn_lease(session_id)
    if verdict == "running":
        events.publish(session_id, "status", {"status": "running", "compute": public})
        return public
    if verdict == "duplicate":
        log.warning("session %s already has a pod; terminating the extra pod %s", session_id,
                    compute.id)
        _terminate_quietly(provider, compute.id)
        return json.loads(reg.get(session_id).get("compute") or "{}")  # type: ignore[no-any-return]
    log.info("session %s was %s when its pod %s came up: terminating it", session_id,
             verdict, compute.id)
    if verdict != "terminating":
        # missing, or already ended by a stop that ran while this create was slow (a
        # re-sent spawn can end the session then): nobody else will terminate this pod
        _terminate_quietly(provider, compute.id)
        return {**public, "status": "terminated"}
    # Stopped while the pod was being created: the stop's reason is current now. When
    # the stop still holds the fence ("fenced") it terminates this pod itself.
    reason = reg.get(session_id).get("reason") or "requested"
    outcome = terminate_session(session_id, reason=reason, fence_token=f"spawn-{session_id}")
    return {**public, "status": "terminated" if outcome == "terminated" else "terminating"}


def spawn_failed(session_id: str, error: BaseException) -> dict[str, Any]:
    """Give up on a spawn: clean any pod created under the session's name, record the
    error and tell subscribers. Returns the failure summary for the task result."""
    err = error.to_dict() if isinstance(error, AtlasError) else {
        "kind": "unknown", "message": f"{type(error).__name__}: spawn failed"}
    reg = registry()
    record = reg.get(session_id)
    if record:
        try:
            _terminate_by_name(provider_for(record), record["pod_name"])
        except AtlasError as exc:
            # The intent stays, so the reaper retries this cleanup later.
            log.warning("session %s: cleanup after failed spawn failed: %s", session_id, exc)
            events.publish(session_id, "terminate_failed", {"error": exc.to_dict()})
            return {"session_id": session_id, "status": "failed", "error": err}
    reg.fail_spawn(session_id, err)
    reg.release_spawn_lease(session_id)
    events.publish(session_id, "status", {"status": "failed", "error": err})
    return {"session_id": session_id, "status": "failed", "error": err}


def terminate_session(session_id: str, *, reason: str, fence_token: str) -> str:
    """Terminate a tracked session's pod once; idempotent.

    Returns the outcome: ``terminated``, ``deferred`` (its spawn is still running and will
    finish the job), or why nothing was done (``alive``, ``fenced``, ``missing``,
    ``failed``). Raises :class:`AtlasError` on provider failures (the task retries).
    """
    reg = registry()
    slack_ms = TERMINATE_FENCE_TTL_MS + 5_000
    verdict, compute_id, _, record = reg.begin_terminate(session_id, reason, fence_token,
                                                         slack_ms)
    if verdict != "ok":
        return verdict
    provider = provider_for(record)
    if not compute_id:
        _terminate_by_name(provider, record["pod_name"])
        # The spawn may record its pod at any moment, even after the lookup above; while
        # we hold the fence its own terminate is fenced out, so settle atomically who
        # ends the pod (an unconditional finish here once leaked it).
        settled, compute_id = reg.settle_podless_terminate(session_id, fence_token)
        if settled == "deferred":
            return "deferred"
    if compute_id:
        try:
            provider.terminate(compute_id)
        except NotFoundError:
            log.info("session %s: pod %s already gone (404 counts as done)", session_id,
                     compute_id)
    fault_point("after_terminate_call")
    reg.finish_terminate(session_id, reason)
    return "terminated"


def terminate_many(session_ids: list[str], *, reason: str, fence_prefix: str,
                   threads: int = IDLE_BATCH_THREADS) -> dict[str, str | BaseException]:
    """Terminate many sessions at once (idle batches); provider calls run on ``threads``.

    Returns each session's outcome (see :func:`terminate_session`) or the exception it
    raised, for the caller to retry one by one. Fence tokens are ``<prefix>:<session id>``
    so a redelivered batch owns the same fences.
    """
    def one(session_id: str) -> str | BaseException:
        try:
            return terminate_session(session_id, reason=reason,
                                     fence_token=f"{fence_prefix}:{session_id}")
        except Exception as exc:  # reported back for a per-session retry
            return exc

    if len(session_ids) <= 1:
        return {sid: one(sid) for sid in session_ids}
    with ThreadPoolExecutor(max_workers=min(threads, len(session_ids)),
                            thread_name_prefix="atlas-terminate") as pool:
        return dict(zip(session_ids, pool.map(one, session_ids), strict=True))


def terminate_gave_up(session_id: str, error: BaseException, retry_in_ms: int) -> None:
    """Record a terminate that exhausted its retries; the reaper tries again later."""
    err = error.to_dict() if isinstance(error, AtlasError) else {"kind": "unknown",
                                                                   "message": str(error)}
    registry().terminate_failed(session_id, err, retry_in_ms)
    events.publish(session_id, "terminate_failed", {"error": err})


def terminate_orphan(provider_name: str, compute_id: str, pod_name: str | None, *,
                     fence_token: str) -> str:
    """Terminate an untracked prefixed pod the reaper found. Idempotent (404 = done).

    ``fence_token`` (the task id) owns the pod's fence, so a redelivery of the same task
    goes ahead while a duplicate from another sweep backs off.
    """
    r = get_redis()
    fence = f"atlas:fence:pod:{provider_name}:{compute_id}"
    if not r.set(fence, fence_token, nx=True, px=TERMINATE_FENCE_TTL_MS) \
            and r.get(fence) != fence_token:
        return "fenced"
    topic = _session_of(pod_name) or compute_id
    events.publish(topic, "terminating", {"reason": "orphan", "compute_id": compute_id,
                                          "provider": provider_name})
    try:
        get_provider(provider_name).terminate(compute_id)
    except NotFoundError:
        pass
    except AtlasError:
        r.delete(fence)
        raise
    events.publish(topic, "status", {"status": "terminated", "reason": "orphan",
                                     "compute_id": compute_id})
    return "terminated"


def _session_of(pod_name: str | None) -> str | None:
    prefix = get_settings().reap_name_prefix
    if pod_name and prefix and pod_name.startswith(prefix):
        return pod_name[len(prefix):] or None
    return None


def _terminate_by_name(provider: Provider, pod_name: str) -> None:
    existing = provider.find_compute_by_name(pod_name)
    if existing is not None:
        _terminate_quietly(provider, existing.id)


def _terminate_quietly(provider: Provider, compute_id: str) -> None:
    try:
        provider.terminate(compute_id)
    except NotFoundError:
        pass
