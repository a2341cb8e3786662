"""The reaper: one sweep that ends idle sessions, orphans and stalled spawns.

Beat triggers :meth:`SessionReaper.reap` every ``ATLAS_REAP_INTERVAL_MS`` (through the
``atlas.reaper.reap`` task). No Celery and no module globals here: the reaper takes a
:class:`~atlas_tasks.deps.Dependencies`, and enqueueing is passed in as callables. One
sweep runs at a time: the sweep lock is an :class:`atlas_tasks.lease.Lease` (owner
token), so a sweep that outlives its lock can never release the next sweep's.

1. **Idle sessions.** ``claim_due`` reads the deadline index up to *now* (cost ∝ what is
   due, not what is tracked), skips anything touched meanwhile, and re-scores what it
   claims a little into the future, so a terminate lost with its worker comes back.
2. **Stalled spawns.** A spawn whose intent saw no progress for ``ATLAS_SPAWN_STALL_MS``
   lost its message (the broker can drop one when a worker dies at the wrong moment): it
   is re-sent, up to ``SPAWN_MAX_RESENDS`` times, under the session's spawn lease. Intents
   past their deadline belong to spawns that never finished: any pod made under the
   session's name is terminated and the session marked failed.
3. **Orphans** (throttled cluster-wide to ``ATLAS_ORPHAN_SCAN_INTERVAL_MS``). Pods of
   ``ATLAS_REAP_PROVIDERS`` whose name starts with ``ATLAS_REAP_NAME_PREFIX`` and that
   are neither tracked nor covered by an intent, and older than
   ``ATLAS_ORPHAN_GRACE_MS``, are terminated. Pods without the prefix are never touched;
   an empty prefix disables orphan reaping (the ExAtlas safety switch). Any exception a
   provider raises (listing, or handling one pod) is logged at WARNING and recorded in
   the report; the other providers and pods, and the other steps, still run.
4. **Durable stops.** ``stop_tracked`` records each stop before enqueueing it; a stop
   whose terminate made no progress for ``ATLAS_STOP_RESEND_MS`` (its message was lost)
   is re-sent. Duplicates are harmless: terminate is fenced and idempotent.
5. **Data-loss guard** (part of the orphan scan). ``atlas:epoch`` is written once per
   Redis dataset. If it is missing while Redis answers and prefixed pods that no record
   covers are running, Redis lost its data (a restart without persistence): every live
   session looks like an orphan. The reaper then starts a grace of
   ``ATLAS_DATA_LOSS_GRACE_MS`` during which it kills no prefixed pod, publishes an
   ``alert`` event on the ``cluster`` topic (``events.subscribe("cluster")``), logs a
   WARNING, and *adopts* every pod named ``<prefix><session id>``: a minimal ``running``
   record with a fresh idle clock of ``max(ATLAS_DEFAULT_IDLE_TTL_MS, grace)``, so a
   session whose user still touches it lives on and one nobody touches is idle-reaped
   through the normal, confirmed terminate. Prefixed pods not named like a session are
   only spared; after the grace they are orphans again. With nothing to protect (a new
   Redis and no prefixed pod) the epoch is just written.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from atlas_tasks import constants as C
from atlas_tasks.deps import Dependencies
from atlas_tasks.lease import Lease, new_owner_token
from atlas_tasks.sessions.records import SESSION_ID_RE, SessionStatus
from atlas_tasks.sessions.service import SessionService, public_compute
from atlas_tasks.specs import Compute, ComputeStatus

log = logging.getLogger(__name__)

#: Redis key that throttles orphan scans cluster-wide (SET NX PX interval).
ORPHAN_SCAN_KEY = "atlas:reaper:orphan-scan"
#: Hash pod id → first time (ms) the reaper saw it untracked, for pods with no created_at.
ORPHAN_FIRST_SEEN_KEY = "atlas:reaper:orphan-first-seen"
#: Lock so two overlapping sweeps never run at once (beat restarts, slow provider lists).
REAP_LOCK_KEY = "atlas:reaper:lock"
#: Ids claimed per sweep; the rest stay due for the next sweep.
CLAIM_BATCH = 5000
#: Set (PX = ``ATLAS_DATA_LOSS_GRACE_MS``, value = detection time in ms) when the reaper
#: found Redis without its data; while it exists no prefixed pod is killed as an orphan.
DATA_LOSS_GRACE_KEY = "atlas:reaper:data-loss-grace"
#: Topic id of cluster-wide events (``alert``) on the compute topic: its channel is
#: ``atlas:events:cluster``; session ids are hex, so it never collides with one.
CLUSTER_TOPIC_ID = "cluster"
#: Pods listed by name in one ``alert`` event (the count is always complete).
ALERT_MAX_PODS = 50

#: Enqueue idle terminates: (session ids, reason). Callers batch them.
EnqueueTerminate = Callable[[list[str], str], None]
#: Enqueue the termination of an untracked prefixed pod: (provider, compute id, pod name).
EnqueueOrphan = Callable[[str, str, "str | None"], None]
#: Re-send a spawn whose message was lost: (session id, sealed payload).
EnqueueSpawn = Callable[[str, str], None]


@dataclass
class ReapReport:
    """What one sweep did (returned as the reaper task's result)."""

    due: list[str] = field(default_factory=list)
    resent_spawns: list[str] = field(default_factory=list)
    stale_intents: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    providers_scanned: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Recorded stops whose terminate was re-sent (its message was presumably lost).
    resent_stops: list[str] = field(default_factory=list)
    #: This sweep found Redis without its data and started the data-loss grace.
    data_loss_detected: bool = False
    #: The data-loss grace was running during this sweep's orphan scan.
    data_loss_grace: bool = False
    #: Prefixed pods a data-loss grace kept from being killed (ids).
    spared: list[str] = field(default_factory=list)
    #: Sessions re-created from their pods after a data loss (session ids).
    adopted: list[str] = field(default_factory=list)
    skipped: bool = False
    duration_ms: float = 0.0

    def summary(self) -> dict[str, object]:
        """JSON-safe counts and ids for the task result / Flower."""
        return {
            "due": len(self.due),
            "resent_spawns": self.resent_spawns,
            "stale_intents": len(self.stale_intents),
            "orphans": self.orphans,
            "providers_scanned": self.providers_scanned,
            "errors": self.errors,
            "resent_stops": self.resent_stops,
            "data_loss_detected": self.data_loss_detected,
            "data_loss_grace": self.data_loss_grace,
            "spared": len(self.spared),
            "adopted": self.adopted,
            "skipped": self.skipped,
            "duration_ms": round(self.duration_ms, 2),
        }


#: Cleanup obligations worked per sweep (one provider lookup each; the rest wait).
CLEANUP_BATCH = 50


def sweep_lock_ms(reap_interval_ms: int) -> int:
    """TTL of the sweep lock: five beat periods (at least 10 s), far above a normal sweep;
    a sweep still running past it (a provider listing hanging) lets the next one start."""
    return max(reap_interval_ms * 5, 10_000)


class SessionReaper:
    """One sweep's decisions (see the module docstring).

    Args:
        deps: Redis, settings, provider factory, event publisher.
        service: the session service whose cleanup runs the obligations (default: one on
            ``deps``).
    """

    def __init__(self, deps: Dependencies, service: SessionService | None = None) -> None:
        self.deps = deps
        self.settings = deps.settings
        self.service = service or SessionService(deps)
        self.store = self.service.store

    def sweep_lock(self) -> Lease:
        """A fresh owner's handle on the sweep lock (not yet acquired)."""
        return Lease(
            self.deps.redis,
            self.store.ks.key(REAP_LOCK_KEY),
            sweep_lock_ms(self.settings.reap_interval_ms),
            owner=new_owner_token("sweep"),
        )

    def reap(
        self,
        *,
        enqueue_terminate: EnqueueTerminate,
        enqueue_orphan: EnqueueOrphan,
        enqueue_spawn: EnqueueSpawn | None = None,
        scan_orphans: bool | None = None,
    ) -> ReapReport:
        """Run one sweep. ``scan_orphans=None`` follows the cluster-wide throttle; without
        ``enqueue_spawn`` stalled spawns are left to their intent's expiry."""
        settings = self.settings
        store = self.store
        started = time.perf_counter()
        report = ReapReport()
        lock = self.sweep_lock()
        if not lock.acquire():
            report.skipped = True
            return report
        try:
            # idle_timeout and max_lifetime come due through the same index and claim
            due = store.claim_due_by_reason(CLAIM_BATCH, C.IDLE_CLAIM_SLACK_MS)
            report.due = [session_id for session_id, _ in due]
            for reason in sorted({reason for _, reason in due}):
                enqueue_terminate([sid for sid, why in due if why == reason], reason)
            self._resend_stops(enqueue_terminate, report)
            if enqueue_spawn is not None:
                for session_id, sealed in store.claim_stalled_spawns(
                    settings.spawn_stall_ms, C.SPAWN_MAX_RESENDS
                ):
                    log.warning(
                        "spawn of session %s made no progress for %d ms: re-sending it",
                        session_id,
                        settings.spawn_stall_ms,
                    )
                    enqueue_spawn(session_id, sealed)
                    report.resent_spawns.append(session_id)
            report.stale_intents = self.resolve_stale_intents(report)
            if scan_orphans is None:
                scan_orphans = bool(
                    self.deps.redis.set(
                        self.store.ks.key(ORPHAN_SCAN_KEY),
                        "1",
                        nx=True,
                        px=settings.orphan_scan_interval_ms,
                    )
                )
            if scan_orphans and settings.reap_name_prefix:
                try:
                    self._scan_orphans(enqueue_orphan, report)
                except Exception as exc:
                    # Last line of defence: the per-provider/per-pod guards below should
                    # catch everything; a sweep that dies here would stop every later step.
                    log.warning(
                        "orphan scan failed: %s: %s", type(exc).__name__, exc, exc_info=True
                    )
                    report.errors.append(f"orphan scan: {type(exc).__name__}: {exc}")
        finally:
            # Owner-only: a sweep that outlived its lock leaves the next sweep's lock alone.
            lock.release()
            report.duration_ms = (time.perf_counter() - started) * 1000
        return report

    def resolve_stale_intents(self, report: ReapReport) -> list[str]:
        """End sessions whose spawn intent expired, and work the due cleanup obligations.

        A stale intent belongs to a spawn that never finished: the session ends at once
        and visibly (``failed``, or ``terminated`` if a stop was pending); the by-name
        cleanup of a pod it may have made becomes a cleanup obligation. Obligations are
        claimed with exponential backoff (see ``SessionStore.claim_cleanups``), so a
        cleanup that keeps failing (a revoked key) costs one provider call per backoff
        step, not one per sweep.
        """
        store = self.store
        stale = store.claim_stale_intents(100)
        for session_id in stale:
            record = store.get(session_id)
            if record is None or record.status not in (
                SessionStatus.SPAWNING,
                SessionStatus.TERMINATING,
            ):
                continue
            if record.status == SessionStatus.TERMINATING and record.compute_id:
                continue  # its pod is known: the deadline index drives its terminate
            if record.status == SessionStatus.TERMINATING:
                store.add_cleanup(session_id, 0)
                store.finish_terminate(session_id, record.reason)
            else:
                error = {
                    "kind": "timeout",
                    "message": "spawn did not finish before its intent expired",
                }
                store.fail_spawn(session_id, error, cleanup_due_in_ms=0)
        for session_id, attempt, next_in_ms in store.claim_cleanups(CLEANUP_BATCH):
            outcome = self.service.run_cleanup(session_id, attempt=attempt, next_in_ms=next_in_ms)
            if outcome == "retrying":
                report.errors.append(
                    f"cleanup of {session_id} failed (attempt {attempt}, next in {next_in_ms} ms)"
                )
        return stale

    def _resend_stops(self, enqueue_terminate: EnqueueTerminate, report: ReapReport) -> None:
        """Re-send recorded stops whose terminate made no progress (see ``_CLAIM_STOPS``)."""
        resend_ms = self.settings.stop_resend_ms
        report.resent_stops = self.store.claim_stops_to_resend(resend_ms)
        if report.resent_stops:
            log.warning(
                "re-sending %d stop(s) whose terminate made no progress for %d ms: %s",
                len(report.resent_stops),
                resend_ms,
                ", ".join(report.resent_stops[:20]),
            )
            enqueue_terminate(report.resent_stops, "requested")

    def _scan_orphans(self, enqueue_orphan: EnqueueOrphan, report: ReapReport) -> None:
        settings = self.settings
        store = self.store
        r = self.deps.redis
        prefix = settings.reap_name_prefix
        mismatch = store.layout_mismatch()
        if mismatch is not None:
            # Never judge pods against a registry read under the wrong names: every live
            # session's pod would look like an orphan.
            log.error("orphan scan skipped: %s", mismatch)
            report.errors.append(mismatch)
            return
        now = store.now_ms()
        epoch_missing = not store.epoch_exists()
        listed: list[tuple[str, list[Compute]]] = []
        for provider_name in settings.reap_providers:
            try:
                pods = list(self.deps.providers(provider_name).list_compute())
            except Exception as exc:
                _provider_failed(report, provider_name, "list", exc)
                continue
            report.providers_scanned.append(provider_name)
            listed.append((provider_name, pods))

        # Prefixed, live pods that no record or intent covers, per provider.
        untracked: list[tuple[str, Compute]] = []
        for provider_name, pods in listed:
            intents = store.intent_ids()
            for pod in pods:
                try:
                    if not pod.name or not pod.name.startswith(prefix):
                        continue  # never touch what atlas did not name
                    if pod.status == ComputeStatus.TERMINATED:
                        continue
                    session_id = pod.name[len(prefix) :]
                    if session_id in intents:
                        continue
                    record = store.get(session_id)
                    if record is not None and record.covers_pod(pod.id):
                        continue
                    untracked.append((provider_name, pod))
                except Exception as exc:
                    _provider_failed(report, provider_name, f"pod {getattr(pod, 'id', '?')}", exc)

        if epoch_missing:
            if untracked:
                self._start_data_loss_grace(untracked, report)
            if untracked or len(listed) == len(settings.reap_providers):
                store.ensure_epoch()
            # else: a provider could not be listed and may hold live sessions' pods; the
            # epoch stays missing so the next scan decides with every provider's pods.
        report.data_loss_grace = bool(r.exists(self.store.ks.key(DATA_LOSS_GRACE_KEY)))
        if report.data_loss_grace:
            self._adopt_or_spare(untracked, report)
            return

        first_seen_key = self.store.ks.key(ORPHAN_FIRST_SEEN_KEY)
        for provider_name, pod in untracked:
            try:
                if pod.created_at is not None:
                    age_ms = now - int(pod.created_at.timestamp() * 1000)
                else:
                    r.hsetnx(first_seen_key, pod.id, now)
                    age_ms = now - int(r.hget(first_seen_key, pod.id) or now)
                if age_ms < settings.orphan_grace_ms:
                    continue
                enqueue_orphan(provider_name, pod.id, pod.name)
                report.orphans.append(pod.id)
                r.hdel(first_seen_key, pod.id)
            except Exception as exc:
                _provider_failed(report, provider_name, f"pod {pod.id}", exc)

    def _start_data_loss_grace(
        self, untracked: list[tuple[str, Compute]], report: ReapReport
    ) -> None:
        """Redis lost its data while our pods run: hold the orphan reaper, raise the alarm."""
        grace_ms = self.settings.data_loss_grace_ms
        if grace_ms > 0:
            self.deps.redis.set(
                self.store.ks.key(DATA_LOSS_GRACE_KEY), str(self.store.now_ms()), px=grace_ms
            )
        report.data_loss_detected = True
        message = (
            f"Redis lost its data ({self.store.n.epoch} is missing) while "
            f"{len(untracked)} prefixed pod(s) run: no prefixed pod is killed for "
            f"{grace_ms} ms and pods named like sessions are adopted. Enable Redis "
            "persistence (appendonly yes, appendfsync everysec)."
        )
        log.warning("DATA LOSS: %s", message)
        self.deps.publish(
            CLUSTER_TOPIC_ID,
            "alert",
            {
                "alert": "redis_data_loss",
                "message": message,
                "grace_ms": grace_ms,
                "pod_count": len(untracked),
                "pods": [
                    {"provider": p, "id": pod.id, "name": pod.name}
                    for p, pod in untracked[:ALERT_MAX_PODS]
                ],
            },
        )

    def _adopt_or_spare(self, untracked: list[tuple[str, Compute]], report: ReapReport) -> None:
        """During the data-loss grace: adopt pods named like sessions, kill nothing."""
        settings = self.settings
        idle_ttl_ms = max(settings.default_idle_ttl_ms, settings.data_loss_grace_ms)
        prefix = settings.reap_name_prefix
        for provider_name, pod in untracked:
            session_id = (pod.name or "")[len(prefix) :]
            try:
                if SESSION_ID_RE.fullmatch(session_id) and self.store.adopt(
                    session_id,
                    provider_name,
                    pod.name or "",
                    pod.id,
                    public_compute(pod),
                    idle_ttl_ms,
                ):
                    report.adopted.append(session_id)
                    log.warning(
                        "data-loss grace: adopted pod %s (%s) as session %s, idle TTL %d ms",
                        pod.id,
                        provider_name,
                        session_id,
                        idle_ttl_ms,
                    )
                    continue
            except Exception as exc:
                _provider_failed(report, provider_name, f"adopt pod {pod.id}", exc)
            report.spared.append(pod.id)
        if report.spared:
            log.warning(
                "data-loss grace: spared %d prefixed pod(s) the orphan reaper would have killed",
                len(report.spared),
            )


def _provider_failed(report: ReapReport, provider_name: str, what: str, exc: BaseException) -> None:
    # Any exception, not only AtlasError: a provider answering something odd must cost
    # one scan of that provider (or one pod), never the sweep.
    message = f"{provider_name}: {what}: {type(exc).__name__}: {exc}"
    report.errors.append(message)
    log.warning("reaper: %s", message)


__all__ = [
    "ALERT_MAX_PODS",
    "CLAIM_BATCH",
    "CLEANUP_BATCH",
    "CLUSTER_TOPIC_ID",
    "DATA_LOSS_GRACE_KEY",
    "ORPHAN_FIRST_SEEN_KEY",
    "ORPHAN_SCAN_KEY",
    "REAP_LOCK_KEY",
    "SESSION_ID_RE",
    "EnqueueOrphan",
    "EnqueueSpawn",
    "EnqueueTerminate",
    "ReapReport",
    "SessionReaper",
    "sweep_lock_ms",
]
