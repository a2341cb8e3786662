"""Worker-side logic of a tracked session: spawn, terminate, orphan terminate, cleanup.

No Celery here: the thin tasks in :mod:`atlas_tasks.tasks` call these functions and
decide about retries. Every function is idempotent, because Celery may deliver a task
twice (late ack + redelivery on worker loss) and the reaper may enqueue duplicates.

**At most one pod per session.** A create request is the only step that can make a pod,
so every create is gated and counted in the registry:

* A spawn attempt starts only while the session is ``spawning`` (``start_spawn`` refuses
  any other status atomically), so a redelivered spawn of a session that is running,
  terminating (with or without a pod), terminated or failed never reaches a create; it
  settles what its status asks for (return the pod, finish a stop) instead.
* Right before each create request, ``begin_create`` checks in one Lua step that the
  session is still ``spawning`` and that this attempt holds the spawn lease, counts the
  create and marks it *unsettled*: from then on a pod may exist under the session's name
  (``<prefix><session id>``) until the create's outcome is known (``finish_spawn`` records
  the pod; ``settle_create`` clears the mark after a definite "nothing was made": 4xx,
  429, connection refused).
* After an ambiguous failure (5xx, read timeout, reset) nobody creates blind. The
  provider's own create loop looks the name up before it creates again; the spawn hands
  it a registry-aware lookup (:class:`_CreateGuard`) that polls the name for
  ``ATLAS_CREATE_LOOKUP_WAIT_MS`` (a create the cloud finishes after the client gave up
  shows within it and is adopted), and, when nothing shows, passes ``begin_create`` again
  before answering "none": a stop that claimed the session during the retry backoff (and
  maybe deleted the first pod by name) stops the spawn here, before a second create. A
  later attempt (task retry, redelivery, re-send) that finds the create unsettled also
  adopts by name after the same bounded poll before it may create.

**Every end is visible.** A spawn that gives up records ``failed`` with the provider's
error, leaves the tracked set and publishes the event in one Lua step, even when the
by-name cleanup cannot run (a bad API key, a Fly app that does not exist). The cleanup is
a separate, durable obligation (``atlas:cleanups``, scored by the next attempt time; the
attempt count in the record): :func:`run_cleanup` runs it, inline once and then from the
reaper with exponential backoff (2 s doubling, capped at 10 min), and publishes a
``cleanup`` event with its outcome; the session's status and error are never rewritten.
A create that definitely made nothing (e.g. 401 on a bad key) needs no cleanup at all.

**Terminate.** A fence (``SET NX``) lets one terminate at a time talk to the provider; a
confirmed or 404 answer ends the session; a crash leaves the session due again in the
deadline index, so the reaper retries it.
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from atlas_tasks import events
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.constants import IDLE_BATCH_THREADS, TERMINATE_FENCE_TTL_MS
from atlas_tasks.errors import AtlasError, NotFoundError, NotTracked
from atlas_tasks.faults import fault_point
from atlas_tasks.providers import Provider, get_provider
from atlas_tasks.providers.http import is_maybe_created
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
    """TTL of a spawn attempt's lease, renewed every third of it while the attempt lives
    (see :class:`_LeaseKeeper`): a dead worker's lease frees within this, a live one's
    never does. Short, and below the stall re-send time."""
    settings = settings or get_settings()
    return max(1_000, min(SPAWN_LEASE_TTL_MS, settings.spawn_stall_ms * 3 // 4))


#: Upper bound of the spawn lease TTL (renewed by a heartbeat, so it only bounds how long
#: a dead worker's lease blocks the redelivery of its spawn).
SPAWN_LEASE_TTL_MS = 10_000


class _LeaseKeeper:
    """Renews one spawn attempt's lease every third of its TTL while the attempt runs
    (its provider calls may take minutes: retries, 429 backoff, the lookup window)."""

    def __init__(self, reg: SessionRegistry, session_id: str, token: str, ttl_ms: int) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(reg, session_id, token, ttl_ms),
                                        name=f"atlas-spawn-lease-{session_id}", daemon=True)

    def _run(self, reg: SessionRegistry, session_id: str, token: str, ttl_ms: int) -> None:
        while not self._stop.wait(ttl_ms / 3000):
            try:
                if not reg.renew_spawn_lease(session_id, token, ttl_ms):
                    return  # released or taken over: nothing left to keep
            except Exception:  # Redis away for a moment: try again next beat
                log.debug("session %s: spawn lease renewal failed", session_id, exc_info=True)

    def __enter__(self) -> _LeaseKeeper:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def spawn_session(session_id: str, sealed: str, *, attempt_id: str) -> dict[str, Any]:
    """Create (or adopt) the pod of a session and start its idle clock.

    Args:
        session_id: the tracked session.
        sealed: the Fernet-sealed request and secret.
        attempt_id: the spawn task's id. Each execution owns the session's spawn lease
            under its own token (task id + a random suffix), renewed while it runs: a
            re-sent spawn finding it held leaves the session to the holder; a redelivery
            of the same task waits up to two lease TTLs for a dead holder's lease to free
            (a live holder keeps renewing it, and then the redelivery leaves too).

    Returns the public compute dict (or a short status dict when there was nothing to
    create). Raises :class:`AtlasError` for the task to retry or fail; the registry is
    left in ``spawning`` with its intent, so nothing is lost.
    """
    reg = registry()
    record = reg.get(session_id)
    if not record:
        raise NotTracked(f"session {session_id!r} is not tracked (record missing)")
    provider = provider_for(record)
    settled = _settle_without_create(reg, provider, session_id, record)
    if settled is not None:
        return settled
    # The lease belongs to this execution, not to the task id: a duplicate delivery of
    # the same task while this one still runs (a visibility timeout shorter than a slow
    # spawn) must not share its lease, or both could pass the create gate.
    token = f"{attempt_id}#{uuid.uuid4().hex[:12]}"
    lease_ms = spawn_lease_ms()
    attempt = reg.start_spawn(session_id, token, lease_ms)
    if attempt == -1 and _same_task_holds_lease(reg, session_id, attempt_id):
        # A redelivery of this very task: its first execution died (worker lost) or is
        # still running (a visibility timeout shorter than the spawn). A dead one's lease
        # stops being renewed and frees within its TTL: wait that long, then take over.
        deadline = time.monotonic() + 2 * lease_ms / 1000
        while attempt == -1 and time.monotonic() < deadline:
            time.sleep(0.2)
            attempt = reg.start_spawn(session_id, token, lease_ms)
    if attempt == -1:
        log.info("session %s: another spawn attempt holds the lease; leaving it", session_id)
        return {"id": None, "status": "spawning"}
    try:
        with _LeaseKeeper(reg, session_id, token, lease_ms):
            return _spawn_attempt(reg, provider, session_id, sealed, token, attempt)
    except Exception:
        reg.release_spawn_lease(session_id, token)  # the task's retry starts at once
        raise


def _same_task_holds_lease(reg: SessionRegistry, session_id: str, task_id: str) -> bool:
    holder = reg.spawn_lease_holder(session_id) or ""
    return holder.split("#", 1)[0] == task_id


def _spawn_attempt(reg: SessionRegistry, provider: Provider, session_id: str, sealed: str,
                   token: str, attempt: int) -> dict[str, Any]:
    attempt_id = token
    record = reg.get(session_id)
    if attempt == -2:  # claimed between the read above and the lease: settle that instead
        return _settle_without_create(reg, provider, session_id, record) or {
            "id": None, "status": record.get("status", "missing")}
    payload = unseal(sealed)
    request = ComputeRequest.model_validate(payload["request"])
    pod_name = record["pod_name"]
    wait_ms = get_settings().create_lookup_wait_ms
    existing = None
    if record.get("create_unsettled") == "1":
        # An earlier create may have made the pod (maybe still landing): adopt, never
        # create blind.
        existing = lookup_with_wait(provider, pod_name, wait_ms)
    if existing is not None:
        log.info("session %s: adopting pod %s found by name after a retry", session_id,
                 existing.id)
        compute = existing
    else:
        verdict = reg.begin_create(session_id, attempt_id)
        if verdict != "ok":
            return _create_refused(reg, provider, session_id, verdict, attempt_id)
        guard = _CreateGuard(reg, provider, session_id, attempt_id, wait_ms)
        try:
            compute = guard.provider().spawn_compute(request, secret=payload.get("secret"))
        except AtlasError as exc:
            if guard.refused is not None:
                # A stop (or another end) claimed the session during the provider's retry:
                # no second create; settle what the session became.
                return _create_refused(reg, provider, session_id, guard.refused, attempt_id)
            if not is_maybe_created(exc):
                reg.settle_create(session_id)  # definitely nothing made: no cleanup owed
            raise
    fault_point("after_create")
    public = public_compute(compute)
    verdict = reg.finish_spawn(session_id, compute.id, public)  # publishes `running`
    reg.release_spawn_lease(session_id, attempt_id)
    if verdict == "running":
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


class SpawnRefused(AtlasError):
    """Raised inside the provider's create loop when the registry refuses a re-create
    (the session is no longer ``spawning``); never reaches a caller."""


class _CreateGuard:
    """The name lookup the provider's create loop runs before it creates again.

    Providers retry an ambiguous create themselves (look the name up, create again if
    nothing is found; see :func:`atlas_tasks.providers.http.create_once`). The spawn gives
    that loop this lookup instead of the provider's plain one: it polls the name for
    ``wait_ms`` (a late create shows and is adopted) and, before it answers "none" (which
    means "create again"), passes :meth:`SessionRegistry.begin_create`. When that refuses,
    it raises :class:`SpawnRefused`; the loop then re-raises the create's error and
    :attr:`refused` tells the spawn why.
    """

    def __init__(self, reg: SessionRegistry, provider: Provider, session_id: str,
                 attempt_id: str, wait_ms: int) -> None:
        self.reg = reg
        self.base = provider
        self.session_id = session_id
        self.attempt_id = attempt_id
        self.wait_ms = wait_ms
        self.refused: str | None = None

    def provider(self) -> Provider:
        """A shallow copy of the provider (same HTTP clients) whose create loop looks
        names up through :meth:`find`; the cached provider itself is left untouched."""
        guarded = copy.copy(self.base)
        guarded.__dict__["find_compute_by_name"] = self.find
        return guarded

    def find(self, name: str) -> Compute | None:
        """Bounded-poll lookup; "none" only once the registry allows another create."""
        found = lookup_with_wait(self.base, name, self.wait_ms)
        if found is not None:
            return found
        verdict = self.reg.begin_create(self.session_id, self.attempt_id)
        if verdict != "ok":
            self.refused = verdict
            raise SpawnRefused(f"session {self.session_id} is {verdict}: not creating again",
                               kind="unknown")
        return None


def lookup_with_wait(provider: Provider, name: str, wait_ms: int) -> Compute | None:
    """Look a pod up by name, polling up to ``wait_ms`` for one to show.

    A cloud may finish a create after the client's read timeout, and list it a moment
    later still: one lookup right after an ambiguous failure can miss it. Polls start
    at 0.25 s and grow to 2 s (a handful of list calls for the default 15 s).

    Raises:
        AtlasError: a lookup failed (whether a pod exists is then unknown).
    """
    deadline = time.monotonic() + wait_ms / 1000
    interval = 0.25
    while True:
        found = provider.find_compute_by_name(name)
        left = deadline - time.monotonic()
        if found is not None or left <= 0:
            return found
        time.sleep(min(interval, left))
        interval = min(2.0, interval * 1.6)


def _settle_without_create(reg: SessionRegistry, provider: Provider, session_id: str,
                           record: dict[str, str]) -> dict[str, Any] | None:
    """What a spawn does for a session that is not ``spawning`` (a redelivery, a re-send,
    a stop that claimed it): never a create. ``None`` means "spawning: go on"."""
    status = record.get("status")
    compute_id = record.get("compute_id") or None
    if status == "spawning":
        return None
    if status == "running" and compute_id:
        return json.loads(record.get("compute") or "{}")  # type: ignore[no-any-return]
    if status == "terminating" and compute_id:
        # Its pod was recorded while a stop was pending: finish that terminate (fenced, so
        # a terminate already talking to the provider is not duplicated). Failures are the
        # terminate path's own (the session stays due in the deadline index).
        try:
            outcome = terminate_session(session_id, reason=record.get("reason") or "requested",
                                        fence_token=f"spawn-{session_id}")
        except AtlasError as exc:
            log.warning("session %s: terminate from a redelivered spawn failed: %s",
                        session_id, exc)
            outcome = "terminating"
        return {"id": compute_id,
                "status": "terminated" if outcome == "terminated" else "terminating"}
    if status == "terminating":
        # Stopped before its pod existed: the stop deferred to the spawn. Make sure no pod
        # exists by name (waiting for a create still landing), then end the session.
        return end_podless_stop(reg, provider, session_id, record)
    # failed, terminated, running without a pod (never written), or gone: nothing to
    # create; a pod that may exist is covered by the session's cleanup obligation.
    return {"id": compute_id, "status": status or "missing"}


def _create_refused(reg: SessionRegistry, provider: Provider, session_id: str,
                    verdict: str, token: str) -> dict[str, Any]:
    reg.release_spawn_lease(session_id, token)
    log.info("session %s: not creating (%s)", session_id, verdict)
    if verdict == "lease_lost":
        return {"id": None, "status": "spawning"}  # the attempt holding the lease goes on
    record = reg.get(session_id)
    if record.get("status") in ("failed", "terminated") and \
            record.get("create_unsettled") == "1" and not record.get("compute_id"):
        # Ended elsewhere while this attempt's ambiguous create may have made a pod:
        # whoever ended it may have looked before that pod showed. Owe a cleanup.
        reg.add_cleanup(session_id, get_settings().create_lookup_wait_ms)
    return _settle_without_create(reg, provider, session_id, record) or {
        "id": None, "status": record.get("status", "missing")}


def end_podless_stop(reg: SessionRegistry, provider: Provider, session_id: str,
                     record: dict[str, str]) -> dict[str, Any]:
    """End a session stopped before it recorded a pod: terminate any pod by name, then
    ``terminated``. When the lookup cannot run, the session ends anyway and the by-name
    cleanup becomes an obligation (see :func:`run_cleanup`)."""
    reason = record.get("reason") or "requested"
    wait_ms = get_settings().create_lookup_wait_ms if record.get("create_unsettled") == "1" else 0
    try:
        pod = lookup_with_wait(provider, record["pod_name"], wait_ms)
        if pod is not None:
            _terminate_quietly(provider, pod.id)
    except AtlasError as exc:
        log.warning("session %s: by-name cleanup of a stopped spawn failed: %s", session_id, exc)
        reg.add_cleanup(session_id, CLEANUP_FIRST_DELAY_MS)
        reg.cleanup_failed(session_id, exc.to_dict())
        events.publish(session_id, "cleanup", {"outcome": "retrying", "attempt": 0,
                                               "error": exc.to_dict()})
    reg.finish_terminate(session_id, reason)
    reg.release_spawn_lease(session_id)
    return {"id": None, "status": "terminated"}


#: First reaper retry of a cleanup the spawn could not finish itself.
CLEANUP_FIRST_DELAY_MS = 2_000


def spawn_failed(session_id: str, error: BaseException) -> dict[str, Any]:
    """Give up on a spawn, visibly: record ``failed`` with the provider's error, stop
    tracking the session and publish the event (one Lua step). When a create may have made
    a pod, its by-name cleanup is registered as an obligation and tried once here; when it
    cannot finish, the reaper retries it with backoff. Returns the failure summary."""
    err = error.to_dict() if isinstance(error, AtlasError) else {
        "kind": "unknown", "message": f"{type(error).__name__}: spawn failed"}
    reg = registry()
    record = reg.get(session_id)
    summary = {"session_id": session_id, "status": "failed", "error": err}
    status = record.get("status")
    if not record or status not in ("spawning", "terminating") or record.get("compute_id"):
        # already ended (its first error stands), or it has a pod its terminate owns
        return {**summary, "status": status or "missing"}
    owes_cleanup = record.get("create_unsettled") == "1"
    wait_ms = get_settings().create_lookup_wait_ms
    # The reaper's first try comes after the inline one had its full lookup window.
    reg.fail_spawn(session_id, err,
                   cleanup_due_in_ms=wait_ms + CLEANUP_FIRST_DELAY_MS if owes_cleanup else None)
    reg.release_spawn_lease(session_id)
    if owes_cleanup:
        run_cleanup(session_id, attempt=0, wait_ms=wait_ms)
    return summary


def run_cleanup(session_id: str, *, attempt: int, wait_ms: int = 0,
                next_in_ms: int | None = None) -> str:
    """Run one attempt of a session's cleanup obligation: find a pod by its name and
    terminate it. Returns ``done``, ``retrying`` or ``gone`` (nothing pending).

    Never raises: a failure is recorded (``cleanup_error``) and reported as a ``cleanup``
    event ``{"outcome": "retrying"}``; the obligation stays, already re-scored by its
    claim. Success publishes ``{"outcome": "done"}``. The session's status and error stay.
    """
    reg = registry()
    record = reg.get(session_id)
    if record.get("cleanup_pending") != "1":
        return "gone"
    pod_id = None
    try:
        provider = provider_for(record)
        pod = lookup_with_wait(provider, record["pod_name"], wait_ms)
        if pod is not None:
            pod_id = pod.id
            _terminate_quietly(provider, pod.id)
    except Exception as exc:  # recorded and retried later; never lost
        err = exc.to_dict() if isinstance(exc, AtlasError) else {
            "kind": "unknown", "message": f"{type(exc).__name__}: cleanup failed"}
        log.warning("session %s: cleanup attempt %d failed: %s", session_id, attempt, exc)
        reg.cleanup_failed(session_id, err)
        data: dict[str, Any] = {"outcome": "retrying", "attempt": attempt, "error": err}
        if next_in_ms is not None:
            data["next_attempt_in_ms"] = next_in_ms
        events.publish(session_id, "cleanup", data)
        return "retrying"
    reg.finish_cleanup(session_id, {"outcome": "done", "attempt": attempt,
                                    "terminated_compute_id": pod_id})
    return "done"


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
