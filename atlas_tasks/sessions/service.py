"""Worker-side logic of a tracked session: spawn, terminate, orphan terminate, cleanup.

No Celery and no module globals here: :class:`SessionService` takes an explicit
:class:`~atlas_tasks.deps.Dependencies` (Redis, settings, provider factory, event
publisher, clock); the thin tasks in :mod:`atlas_tasks.tasks.compute` call its methods and
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
deadline index, so the reaper retries it. The spawn lease and the fences are
:class:`atlas_tasks.lease.Lease` leases: renewed and released only by their owner.
"""

from __future__ import annotations

import copy
import logging
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import redis

from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import AtlasError, NotFoundError, NotTracked, is_transient
from atlas_tasks.faults import fault_point
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.lease import Lease
from atlas_tasks.providers.base import Provider
from atlas_tasks.providers.http import is_maybe_created
from atlas_tasks.quotas.store import QuotaStore
from atlas_tasks.sealing import unseal
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.store import SessionStore, store_for
from atlas_tasks.specs import Compute, ComputeRequest

log = logging.getLogger(__name__)

#: Upper bound of the spawn lease TTL (renewed by a heartbeat, so it only bounds how long
#: a dead worker's lease blocks the redelivery of its spawn).
SPAWN_LEASE_TTL_MS = 10_000
#: First reaper retry of a cleanup the spawn could not finish itself.
CLEANUP_FIRST_DELAY_MS = 2_000

_SPAWNING = SessionStatus.SPAWNING
_RUNNING = SessionStatus.RUNNING
_TERMINATING = SessionStatus.TERMINATING
_TERMINATED = SessionStatus.TERMINATED
_FAILED = SessionStatus.FAILED


def public_compute(compute: Compute) -> dict[str, Any]:
    """The JSON-safe view of a compute kept in Redis and returned by tasks: no raw
    secret (the auth handle keeps only its scheme) and no provider ``raw`` body."""
    data = compute.model_dump(mode="json", exclude={"raw", "auth"})
    data["auth"] = compute.auth.scheme if compute.auth else "none"
    return data


def spawn_lease_ms(settings: AtlasSettings) -> int:
    """TTL of a spawn attempt's lease, renewed every third of it while the attempt lives
    (:meth:`~atlas_tasks.lease.Lease.keep_alive`): a dead worker's lease frees within
    this, a live one's never does. Short, and below the stall re-send time."""
    return max(1_000, min(SPAWN_LEASE_TTL_MS, settings.spawn_stall_ms * 3 // 4))


def _error_dict(error: BaseException, message: str) -> dict[str, Any]:
    if isinstance(error, AtlasError):
        return error.to_dict()
    return {"kind": "unknown", "message": f"{type(error).__name__}: {message}"}


def _status_reply(compute_id: str | None, status: SessionStatus | str | None) -> dict[str, Any]:
    return {"id": compute_id, "status": str(status) if status else "missing"}


def _terminate_quietly(provider: Provider, compute_id: str) -> None:
    try:
        provider.terminate(compute_id)
    except NotFoundError:
        pass


class SpawnRefused(AtlasError):
    """Raised inside the provider's create loop when the store refuses a re-create
    (the session is no longer ``spawning``); never reaches a caller."""


class SessionService:
    """The worker-side transitions of tracked sessions.

    Args:
        deps: Redis, settings, provider factory, event publisher and clocks.
        store: the session store (default: the cached store on ``deps.redis``).
    """

    def __init__(self, deps: Dependencies, store: SessionStore | None = None) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.store = store or store_for(deps.redis, namespace=deps.settings.namespace)

    # ------------------------------------------------------------------ providers
    def provider_for(self, record: SessionRecord) -> Provider:
        """The provider a session was spawned on, with its per-call key if any."""
        api_key = None
        if record.api_key_sealed:
            api_key = unseal(record.api_key_sealed, self.settings).get("api_key")
        return self.deps.providers(
            record.provider, api_key=api_key, base_url=record.base_url or None
        )

    def lookup_with_wait(self, provider: Provider, name: str, wait_ms: int) -> Compute | None:
        """Look a pod up by name, polling up to ``wait_ms`` for one to show.

        A cloud may finish a create after the client's read timeout, and list it a moment
        later still: one lookup right after an ambiguous failure can miss it. Polls start
        at 0.25 s and grow to 2 s (a handful of list calls for the default 15 s).

        Raises:
            AtlasError: a lookup failed (whether a pod exists is then unknown).
        """
        deadline = self.deps.monotonic() + wait_ms / 1000
        interval = 0.25
        while True:
            found = provider.find_compute_by_name(name)
            left = deadline - self.deps.monotonic()
            if found is not None or left <= 0:
                return found
            self.deps.sleep(min(interval, left))
            interval = min(2.0, interval * 1.6)

    # ------------------------------------------------------------------ spawn
    def spawn(self, session_id: str, sealed: str, *, attempt_id: str) -> dict[str, Any]:
        """Create (or adopt) the pod of a session and start its idle clock.

        Args:
            session_id: the tracked session.
            sealed: the Fernet-sealed request and secret.
            attempt_id: the spawn task's id. Each execution owns the session's spawn lease
                under its own token (task id + a random suffix), renewed while it runs: a
                re-sent spawn finding it held leaves the session to the holder; a
                redelivery of the same task waits up to two lease TTLs for a dead
                holder's lease to free (a live holder keeps renewing it, and then the
                redelivery leaves too).

        Returns the public compute dict (or a short status dict when there was nothing to
        create). Raises :class:`AtlasError` for the task to retry or fail; the store is
        left in ``spawning`` with its intent, so nothing is lost.
        """
        store = self.store
        record = store.get(session_id)
        if record is None:
            raise NotTracked(f"session {session_id!r} is not tracked (record missing)")
        provider = self.provider_for(record)
        settled = self._settle_without_create(provider, record)
        if settled is not None:
            return settled
        # The lease belongs to this execution, not to the task id: a duplicate delivery of
        # the same task while this one still runs (a visibility timeout shorter than a slow
        # spawn) must not share its lease, or both could pass the create gate.
        token = f"{attempt_id}#{uuid.uuid4().hex[:12]}"
        lease_ms = spawn_lease_ms(self.settings)
        attempt = store.start_spawn(session_id, token, lease_ms)
        if attempt == -1 and self._same_task_holds_lease(session_id, attempt_id):
            # A redelivery of this very task: its first execution died (worker lost) or is
            # still running (a visibility timeout shorter than the spawn). A dead one's
            # lease stops being renewed and frees within its TTL: wait that long, then
            # take over.
            deadline = self.deps.monotonic() + 2 * lease_ms / 1000
            while attempt == -1 and self.deps.monotonic() < deadline:
                self.deps.sleep(0.2)
                attempt = store.start_spawn(session_id, token, lease_ms)
        if attempt == -1:
            log.info("session %s: another spawn attempt holds the lease; leaving it", session_id)
            return {"id": None, "status": str(_SPAWNING)}
        lease = store.spawn_lease(session_id, token, lease_ms)
        try:
            # Renewed every third of its TTL while the attempt runs (its provider calls
            # may take minutes: retries, 429 backoff, the lookup window).
            with lease.keep_alive():
                return self._spawn_attempt(provider, session_id, sealed, lease, attempt)
        except Exception:
            lease.release()  # the task's retry starts at once
            raise

    def _same_task_holds_lease(self, session_id: str, task_id: str) -> bool:
        holder = self.store.spawn_lease_holder(session_id) or ""
        return holder.split("#", 1)[0] == task_id

    def _spawn_attempt(
        self, provider: Provider, session_id: str, sealed: str, lease: Lease, attempt: int
    ) -> dict[str, Any]:
        store = self.store
        token = lease.owner
        record = store.get(session_id)
        if record is None or attempt == -2:
            # claimed between the read above and the lease: settle that instead
            if record is None:
                return _status_reply(None, None)
            return self._settle_without_create(provider, record) or _status_reply(
                None, record.status
            )
        payload = unseal(sealed, self.settings)
        request = ComputeRequest.model_validate(payload["request"])
        pod_name = record.pod_name or ""
        wait_ms = self.settings.create_lookup_wait_ms
        existing = None
        if record.create_unsettled:
            # An earlier create may have made the pod (maybe still landing): adopt, never
            # create blind.
            existing = self.lookup_with_wait(provider, pod_name, wait_ms)
        if existing is not None:
            log.info(
                "session %s: adopting pod %s found by name after a retry", session_id, existing.id
            )
            compute = existing
        else:
            verdict = store.begin_create(session_id, token)
            if verdict != "ok":
                return self._create_refused(provider, session_id, verdict, token)
            guard = _CreateGuard(self, provider, session_id, token, wait_ms)
            try:
                compute = guard.provider().spawn_compute(request, secret=payload.get("secret"))
            except AtlasError as exc:
                if guard.refused is not None:
                    # A stop (or another end) claimed the session during the provider's
                    # retry: no second create; settle what the session became.
                    return self._create_refused(provider, session_id, guard.refused, token)
                if not is_maybe_created(exc):
                    store.settle_create(session_id)  # definitely nothing made: no cleanup
                raise
        fault_point("after_create")
        public = public_compute(compute)
        verdict = store.finish_spawn(session_id, compute.id, public)  # publishes `running`
        lease.release()
        if verdict == _RUNNING:
            self._correct_reservation(session_id, compute)
            return public
        if verdict == "duplicate":
            log.warning(
                "session %s already has a pod; terminating the extra pod %s", session_id, compute.id
            )
            _terminate_quietly(provider, compute.id)
            current = store.get(session_id)
            return (current.compute if current else None) or {}
        log.info(
            "session %s was %s when its pod %s came up: terminating it",
            session_id,
            verdict,
            compute.id,
        )
        if verdict != _TERMINATING:
            # missing, or already ended by a stop that ran while this create was slow (a
            # re-sent spawn can end the session then): nobody else will terminate this pod
            _terminate_quietly(provider, compute.id)
            return {**public, "status": str(_TERMINATED)}
        # Stopped while the pod was being created: the stop's reason is current now. When
        # the stop still holds the fence ("fenced") it terminates this pod itself.
        current = store.get(session_id)
        reason = (current.reason if current else None) or "requested"
        outcome = self.terminate(session_id, reason=reason, fence_token=f"spawn-{session_id}")
        return {**public, "status": str(_TERMINATED if outcome == "terminated" else _TERMINATING)}

    def _correct_reservation(self, session_id: str, compute: Compute) -> None:
        """Charge the session's quota reservation the pod's real ``cost_per_hour``.

        After ``finish_spawn``, not inside it: a worker dying in between leaves the
        catalog estimate in place (admission's figure, never a leak) until the spawn's
        redelivery corrects it (see :meth:`_settle_without_create`); the reservation is
        still released by the session's end. A session that ended meanwhile holds no
        reservation and nothing is re-reserved (``correct`` answers ``None``).
        """
        if compute.cost_per_hour is not None:
            self._correct_price(session_id, compute.cost_per_hour)

    def _correct_price(self, session_id: str, hourly_usd: float) -> None:
        try:
            QuotaStore(self.deps.redis, namespace=self.store.ks.namespace).correct(
                session_id, hourly_usd
            )
        except (AtlasError, redis.RedisError) as exc:  # the estimate stays; not fatal
            log.warning("session %s: could not correct its quota reservation: %s", session_id, exc)

    def _settle_without_create(
        self, provider: Provider, record: SessionRecord
    ) -> dict[str, Any] | None:
        """What a spawn does for a session that is not ``spawning`` (a redelivery, a
        re-send, a stop that claimed it): never a create. ``None`` means "spawning: go
        on"."""
        status = record.status
        compute_id = record.compute_id or None
        if status == _SPAWNING:
            return None
        if status == _RUNNING and compute_id:
            # A redelivery after the worker died between finish_spawn and its correct:
            # correct now (idempotent: it sets the same price again otherwise).
            cost = (record.compute or {}).get("cost_per_hour")
            if isinstance(cost, int | float) and not isinstance(cost, bool):
                self._correct_price(record.id, float(cost))
            return record.compute or {}
        if status == _TERMINATING and compute_id:
            # Its pod was recorded while a stop was pending: finish that terminate (fenced,
            # so a terminate already talking to the provider is not duplicated). Failures
            # are the terminate path's own (the session stays due in the deadline index).
            try:
                outcome = self.terminate(
                    record.id, reason=record.reason or "requested", fence_token=f"spawn-{record.id}"
                )
            except AtlasError as exc:
                log.warning(
                    "session %s: terminate from a redelivered spawn failed: %s", record.id, exc
                )
                outcome = str(_TERMINATING)
            return {
                "id": compute_id,
                "status": str(_TERMINATED if outcome == "terminated" else _TERMINATING),
            }
        if status == _TERMINATING:
            # Stopped before its pod existed: the stop deferred to the spawn. Make sure no
            # pod exists by name (waiting for a create still landing), then end the session.
            return self.end_podless_stop(provider, record)
        # failed, terminated, running without a pod (never written), or gone: nothing to
        # create; a pod that may exist is covered by the session's cleanup obligation.
        return _status_reply(compute_id, status)

    def _create_refused(
        self, provider: Provider, session_id: str, verdict: str, token: str
    ) -> dict[str, Any]:
        store = self.store
        store.release_spawn_lease(session_id, token)
        log.info("session %s: not creating (%s)", session_id, verdict)
        if verdict == "lease_lost":
            return {"id": None, "status": str(_SPAWNING)}  # the lease holder goes on
        record = store.get(session_id)
        if record is None:
            return _status_reply(None, None)
        if record.ended and record.create_unsettled and not record.compute_id:
            # Ended elsewhere while this attempt's ambiguous create may have made a pod:
            # whoever ended it may have looked before that pod showed. Owe a cleanup.
            store.add_cleanup(session_id, self.settings.create_lookup_wait_ms)
        return self._settle_without_create(provider, record) or _status_reply(None, record.status)

    def end_podless_stop(self, provider: Provider, record: SessionRecord) -> dict[str, Any]:
        """End a session stopped before it recorded a pod: terminate any pod by name, then
        ``terminated``. When the lookup cannot run, the session ends anyway and the by-name
        cleanup becomes an obligation (see :meth:`run_cleanup`)."""
        store = self.store
        session_id = record.id
        reason = record.reason or "requested"
        wait_ms = self.settings.create_lookup_wait_ms if record.create_unsettled else 0
        try:
            pod = self.lookup_with_wait(provider, record.pod_name or "", wait_ms)
            if pod is not None:
                _terminate_quietly(provider, pod.id)
        except AtlasError as exc:
            log.warning(
                "session %s: by-name cleanup of a stopped spawn failed: %s", session_id, exc
            )
            store.add_cleanup(session_id, CLEANUP_FIRST_DELAY_MS)
            store.cleanup_failed(session_id, exc.to_dict())
            self.deps.publish(
                session_id, "cleanup", {"outcome": "retrying", "attempt": 0, "error": exc.to_dict()}
            )
        store.finish_terminate(session_id, reason)
        store.release_spawn_lease(session_id)
        return {"id": None, "status": str(_TERMINATED)}

    def spawn_failed(self, session_id: str, error: BaseException) -> dict[str, Any]:
        """Give up on a spawn, visibly: record ``failed`` with the provider's error, stop
        tracking the session and publish the event (one Lua step). When a create may have
        made a pod, its by-name cleanup is registered as an obligation and tried once here;
        when it cannot finish, the reaper retries it with backoff. Returns the summary."""
        err = _error_dict(error, "spawn failed")
        store = self.store
        record = store.get(session_id)
        summary = {"session_id": session_id, "status": str(_FAILED), "error": err}
        if record is None or record.status not in (_SPAWNING, _TERMINATING) or record.compute_id:
            # already ended (its first error stands), or it has a pod its terminate owns
            status = record.status if record else None
            return {**summary, "status": str(status) if status else "missing"}
        owes_cleanup = record.create_unsettled
        wait_ms = self.settings.create_lookup_wait_ms
        # The reaper's first try comes after the inline one had its full lookup window.
        store.fail_spawn(
            session_id,
            err,
            cleanup_due_in_ms=(wait_ms + CLEANUP_FIRST_DELAY_MS if owes_cleanup else None),
        )
        store.release_spawn_lease(session_id)
        if owes_cleanup:
            self.run_cleanup(session_id, attempt=0, wait_ms=wait_ms)
        return summary

    def run_cleanup(
        self, session_id: str, *, attempt: int, wait_ms: int = 0, next_in_ms: int | None = None
    ) -> str:
        """Run one attempt of a session's cleanup obligation: find a pod by its name and
        terminate it. Returns ``done``, ``retrying`` or ``gone`` (nothing pending).

        Never raises: a failure is recorded (``cleanup_error``) and reported as a
        ``cleanup`` event ``{"outcome": "retrying"}``; the obligation stays, already
        re-scored by its claim. Success publishes ``{"outcome": "done"}``. The session's
        status and error stay.
        """
        store = self.store
        record = store.get(session_id)
        if record is None or not record.cleanup_pending:
            return "gone"
        pod_id = None
        try:
            provider = self.provider_for(record)
            pod = self.lookup_with_wait(provider, record.pod_name or "", wait_ms)
            if pod is not None:
                pod_id = pod.id
                _terminate_quietly(provider, pod.id)
        except Exception as exc:  # recorded and retried later; never lost
            err = _error_dict(exc, "cleanup failed")
            log.warning("session %s: cleanup attempt %d failed: %s", session_id, attempt, exc)
            store.cleanup_failed(session_id, err)
            data: dict[str, Any] = {"outcome": "retrying", "attempt": attempt, "error": err}
            if next_in_ms is not None:
                data["next_attempt_in_ms"] = next_in_ms
            self.deps.publish(session_id, "cleanup", data)
            return "retrying"
        store.finish_cleanup(
            session_id, {"outcome": "done", "attempt": attempt, "terminated_compute_id": pod_id}
        )
        return "done"

    # ------------------------------------------------------------------ terminate
    def terminate(self, session_id: str, *, reason: str, fence_token: str) -> str:
        """Terminate a tracked session's pod once; idempotent.

        Returns the outcome: ``terminated``, ``deferred`` (its spawn is still running and
        will finish the job), or why nothing was done (``alive``, ``fenced``, ``missing``,
        ``failed``). Raises :class:`AtlasError` on provider failures (the task retries).
        """
        store = self.store
        slack_ms = C.TERMINATE_FENCE_TTL_MS + 5_000
        verdict, compute_id, _, record = store.begin_terminate(
            session_id, reason, fence_token, slack_ms
        )
        if verdict != "ok":
            return verdict
        provider = self.provider_for(record)
        if not compute_id:
            existing = provider.find_compute_by_name(record.pod_name or "")
            if existing is not None:
                _terminate_quietly(provider, existing.id)
            # The spawn may record its pod at any moment, even after the lookup above;
            # while we hold the fence its own terminate is fenced out, so settle atomically
            # who ends the pod (an unconditional finish here once leaked it).
            settled, compute_id = store.settle_podless_terminate(session_id, fence_token)
            if settled == "deferred":
                return "deferred"
        if compute_id:
            try:
                provider.terminate(compute_id)
            except NotFoundError:
                log.info(
                    "session %s: pod %s already gone (404 counts as done)", session_id, compute_id
                )
        fault_point("after_terminate_call")
        store.finish_terminate(session_id, reason)
        return "terminated"

    def terminate_many(
        self,
        session_ids: list[str],
        *,
        reason: str,
        fence_prefix: str,
        threads: int = C.IDLE_BATCH_THREADS,
    ) -> dict[str, str | BaseException]:
        """Terminate many sessions at once (idle batches); provider calls run on
        ``threads``.

        Returns each session's outcome (see :meth:`terminate`) or the exception it raised,
        for the caller to retry one by one. Fence tokens are ``<prefix>:<session id>`` so
        a redelivered batch owns the same fences.
        """

        def one(session_id: str) -> str | BaseException:
            try:
                return self.terminate(
                    session_id, reason=reason, fence_token=f"{fence_prefix}:{session_id}"
                )
            except Exception as exc:  # reported back for a per-session retry
                return exc

        if len(session_ids) <= 1:
            return {sid: one(sid) for sid in session_ids}
        with ThreadPoolExecutor(
            max_workers=min(threads, len(session_ids)), thread_name_prefix="atlas-terminate"
        ) as pool:
            return dict(zip(session_ids, pool.map(one, session_ids), strict=True))

    def terminate_gave_up(self, session_id: str, error: BaseException, retry_in_ms: int) -> None:
        """Record a terminate that exhausted its retries; the reaper tries again later."""
        err = (
            error.to_dict()
            if isinstance(error, AtlasError)
            else {"kind": "unknown", "message": str(error)}
        )
        self.store.terminate_failed(session_id, err, retry_in_ms)
        self.deps.publish(session_id, "terminate_failed", {"error": err})

    def terminate_orphan(
        self, provider_name: str, compute_id: str, pod_name: str | None, *, fence_token: str
    ) -> str:
        """Terminate an untracked prefixed pod the reaper found. Idempotent (404 = done).

        ``fence_token`` (the task id) owns the pod's fence, so a redelivery of the same
        task goes ahead while a duplicate from another sweep backs off.
        """
        fence = Lease(
            self.deps.redis,
            self.store.ks.key(C.ORPHAN_FENCE_KEY).format(
                provider=provider_name, compute_id=compute_id
            ),
            C.TERMINATE_FENCE_TTL_MS,
            owner=fence_token,
        )
        if not (fence.acquire() or fence.renew()):
            return "fenced"
        topic = self.session_of(pod_name) or compute_id
        self.deps.publish(
            topic,
            "terminating",
            {"reason": "orphan", "compute_id": compute_id, "provider": provider_name},
        )
        try:
            self.deps.providers(provider_name).terminate(compute_id)
        except NotFoundError:
            pass
        except AtlasError:
            fence.release()
            raise
        self.deps.publish(
            topic,
            "status",
            {"status": str(_TERMINATED), "reason": "orphan", "compute_id": compute_id},
        )
        return "terminated"

    def session_of(self, pod_name: str | None) -> str | None:
        """The session id a pod name carries (``<prefix><session id>``), if any."""
        prefix = self.settings.reap_name_prefix
        if pod_name and prefix and pod_name.startswith(prefix):
            return pod_name[len(prefix) :] or None
        return None


class _CreateGuard:
    """The name lookup the provider's create loop runs before it creates again.

    Providers retry an ambiguous create themselves (look the name up, create again if
    nothing is found; see :func:`atlas_tasks.providers.http.create_once`). The spawn gives
    that loop this lookup instead of the provider's plain one: it polls the name for
    ``wait_ms`` (a late create shows and is adopted) and, before it answers "none" (which
    means "create again"), passes :meth:`SessionStore.begin_create`. When that refuses,
    it raises :class:`SpawnRefused`; the loop then re-raises the create's error and
    :attr:`refused` tells the spawn why.
    """

    def __init__(
        self,
        service: SessionService,
        provider: Provider,
        session_id: str,
        attempt_id: str,
        wait_ms: int,
    ) -> None:
        self.service = service
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
        """Bounded-poll lookup; "none" only once the store allows another create."""
        found = self.service.lookup_with_wait(self.base, name, self.wait_ms)
        if found is not None:
            return found
        verdict = self.service.store.begin_create(self.session_id, self.attempt_id)
        if verdict != "ok":
            self.refused = verdict
            raise SpawnRefused(
                f"session {self.session_id} is {verdict}: not creating again", kind="unknown"
            )
        return None


class SessionJob:
    """Base of the periodic jobs over tracked sessions (the cost meter, the GPU watch):
    the dependencies, their namespace, and the session service and store they act through.

    Args:
        deps: Redis, settings, providers, publisher.
        service: the session service whose ``provider_for`` builds a session's provider
            client (its per-call key included); default: one on ``deps``.
    """

    def __init__(self, deps: Dependencies, service: SessionService | None = None) -> None:
        self.deps = deps
        self.r = deps.redis
        self.ks = keyspace(deps.settings.namespace)
        self.service = service or SessionService(deps)
        self.store = self.service.store


__all__ = [
    "SessionJob",
    "CLEANUP_FIRST_DELAY_MS",
    "SPAWN_LEASE_TTL_MS",
    "SessionService",
    "SpawnRefused",
    "is_transient",
    "public_compute",
    "spawn_lease_ms",
]
