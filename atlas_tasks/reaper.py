"""The reaper: one sweep that ends idle sessions, orphans and stalled spawns.

Beat triggers :func:`reap` every ``ATLAS_REAP_INTERVAL_MS`` (through the
``atlas.reaper.reap`` task). No Celery here: enqueueing is passed in as callables.

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
   an empty prefix disables orphan reaping (the ExAtlas safety switch).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from atlas_tasks import constants as C
from atlas_tasks.config import AtlasSettings, get_settings
from atlas_tasks.errors import AtlasError
from atlas_tasks.lifecycle import registry, run_cleanup
from atlas_tasks.providers import get_provider
from atlas_tasks.specs import ComputeStatus

log = logging.getLogger(__name__)

#: Redis key that throttles orphan scans cluster-wide (SET NX PX interval).
ORPHAN_SCAN_KEY = "atlas:reaper:orphan-scan"
#: Hash pod id → first time (ms) the reaper saw it untracked, for pods with no created_at.
ORPHAN_FIRST_SEEN_KEY = "atlas:reaper:orphan-first-seen"
#: Lock so two overlapping sweeps never run at once (beat restarts, slow provider lists).
REAP_LOCK_KEY = "atlas:reaper:lock"
#: Ids claimed per sweep; the rest stay due for the next sweep.
CLAIM_BATCH = 5000

#: Enqueue idle terminates: (session ids, reason). Callers batch them.
EnqueueTerminate = Callable[[list[str], str], None]
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
    skipped: bool = False
    duration_ms: float = 0.0

    def summary(self) -> dict[str, object]:
        """JSON-safe counts and ids for the task result / Flower."""
        return {
            "due": len(self.due), "resent_spawns": self.resent_spawns,
            "stale_intents": len(self.stale_intents),
            "orphans": self.orphans, "providers_scanned": self.providers_scanned,
            "errors": self.errors, "skipped": self.skipped,
            "duration_ms": round(self.duration_ms, 2),
        }


def reap(
    *,
    enqueue_terminate: EnqueueTerminate,
    enqueue_orphan: EnqueueOrphan,
    enqueue_spawn: EnqueueSpawn | None = None,
    settings: AtlasSettings | None = None,
    scan_orphans: bool | None = None,
) -> ReapReport:
    """Run one sweep. ``scan_orphans=None`` follows the cluster-wide throttle; without
    ``enqueue_spawn`` stalled spawns are left to their intent's expiry."""
    settings = settings or get_settings()
    started = time.perf_counter()
    reg = registry(settings)
    report = ReapReport()
    lock_ms = max(settings.reap_interval_ms * 5, 10_000)
    if not reg.r.set(REAP_LOCK_KEY, "1", nx=True, px=lock_ms):
        report.skipped = True
        return report
    try:
        report.due = reg.claim_due(CLAIM_BATCH, C.IDLE_CLAIM_SLACK_MS)
        if report.due:
            enqueue_terminate(report.due, "idle_timeout")
        if enqueue_spawn is not None:
            for session_id, sealed in reg.claim_stalled_spawns(settings.spawn_stall_ms,
                                                               C.SPAWN_MAX_RESENDS):
                log.warning("spawn of session %s made no progress for %d ms: re-sending it",
                            session_id, settings.spawn_stall_ms)
                enqueue_spawn(session_id, sealed)
                report.resent_spawns.append(session_id)
        report.stale_intents = _resolve_stale_intents(settings, report)
        if scan_orphans is None:
            scan_orphans = bool(reg.r.set(ORPHAN_SCAN_KEY, "1", nx=True,
                                          px=settings.orphan_scan_interval_ms))
        if scan_orphans and settings.reap_name_prefix:
            _scan_orphans(settings, enqueue_orphan, report)
    finally:
        reg.r.delete(REAP_LOCK_KEY)
        report.duration_ms = (time.perf_counter() - started) * 1000
    return report


#: Cleanup obligations worked per sweep (one provider lookup each; the rest wait).
CLEANUP_BATCH = 50


def _resolve_stale_intents(settings: AtlasSettings, report: ReapReport) -> list[str]:
    """End sessions whose spawn intent expired, and work the due cleanup obligations.

    A stale intent belongs to a spawn that never finished: the session ends at once and
    visibly (``failed``, or ``terminated`` if a stop was pending); the by-name cleanup of
    a pod it may have made becomes a cleanup obligation. Obligations are claimed with
    exponential backoff (see ``SessionRegistry.claim_cleanups``), so a cleanup that keeps
    failing (a revoked key) costs one provider call per backoff step, not one per sweep.
    """
    reg = registry(settings)
    stale = reg.claim_stale_intents(100)
    for session_id in stale:
        record = reg.get(session_id)
        status = record.get("status") if record else None
        if status not in ("spawning", "terminating"):
            continue
        if status == "terminating" and record.get("compute_id"):
            continue  # its pod is known: the deadline index drives its terminate
        if status == "terminating":
            reg.add_cleanup(session_id, 0)
            reg.finish_terminate(session_id, record.get("reason"))
        else:
            error = {"kind": "timeout",
                     "message": "spawn did not finish before its intent expired"}
            reg.fail_spawn(session_id, error, cleanup_due_in_ms=0)
    for session_id, attempt, next_in_ms in reg.claim_cleanups(CLEANUP_BATCH):
        outcome = run_cleanup(session_id, attempt=attempt, next_in_ms=next_in_ms)
        if outcome == "retrying":
            report.errors.append(f"cleanup of {session_id} failed (attempt {attempt}, next "
                                 f"in {next_in_ms} ms)")
    return stale


def _scan_orphans(settings: AtlasSettings, enqueue_orphan: EnqueueOrphan,
                  report: ReapReport) -> None:
    reg = registry(settings)
    prefix = settings.reap_name_prefix
    now = reg.now_ms()
    for provider_name in settings.reap_providers:
        try:
            pods = get_provider(provider_name).list_compute()
        except AtlasError as exc:
            report.errors.append(f"{provider_name}: {exc}")
            log.warning("reaper could not list %s: %s", provider_name, exc)
            continue
        report.providers_scanned.append(provider_name)
        intents = reg.intent_ids()
        for pod in pods:
            if not pod.name or not pod.name.startswith(prefix):
                continue  # never touch what atlas did not name
            if pod.status == ComputeStatus.TERMINATED:
                continue
            session_id = pod.name[len(prefix):]
            if session_id in intents or _tracked(reg.get(session_id), pod.id):
                continue
            if pod.created_at is not None:
                age_ms = now - int(pod.created_at.timestamp() * 1000)
            else:
                reg.r.hsetnx(ORPHAN_FIRST_SEEN_KEY, pod.id, now)
                age_ms = now - int(reg.r.hget(ORPHAN_FIRST_SEEN_KEY, pod.id) or now)
            if age_ms < settings.orphan_grace_ms:
                continue
            report.orphans.append(pod.id)
            enqueue_orphan(provider_name, pod.id, pod.name)
            reg.r.hdel(ORPHAN_FIRST_SEEN_KEY, pod.id)


def _tracked(record: dict[str, str], pod_id: str) -> bool:
    if not record:
        return False
    if record.get("status") not in ("spawning", "running", "terminating"):
        return False
    return record.get("compute_id") in (None, "", pod_id)
