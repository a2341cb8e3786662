"""GPU-idle reaping (opt-in): end a running session whose GPUs all sit idle, heartbeats
or not — the notebook tab left open overnight keeps touching a pod nobody uses.

A session opts in with ``gpu_idle_below_pct`` and ``gpu_idle_window_ms`` on its record
(spawn options), or every session does through ``ATLAS_GPU_IDLE_BELOW_PCT`` and
``ATLAS_GPU_IDLE_WINDOW_MS`` (both needed; the record's values win). The beat task
``atlas.sessions.gpu_watch`` runs :meth:`GpuIdleWatcher.watch` every
``ATLAS_GPU_WATCH_INTERVAL_MS``:

* only opted-in ``running`` sessions are looked at, and only on providers that declare
  ``Capability.GPU_UTILIZATION``: one ``get_compute`` each, for
  ``Compute.gpu_utilization``;
* every GPU below the threshold → the session's "idle since" mark
  (:data:`~atlas_tasks.constants.GPU_IDLE_SINCE_KEY`, Redis time) is set if absent;
  any GPU at or above it, or no utilisation figure at all (no reading is not idleness),
  clears the mark;
* a mark older than the window → the session's terminate is enqueued through the normal
  path with reason ``gpu_idle`` (fenced, idempotent: its ``terminating`` event names the
  reason). The mark stays until the session ends, so a lost terminate is enqueued again
  by the next watch.

Cost at scale: without a deployment-wide policy (the default) only sessions that opted in
at spawn can be reaped, so the watch reads the GPU-idle watch index
(:data:`~atlas_tasks.constants.GPU_WATCH_INDEX_KEY`, one set per registry shard, written
in the record's create step), not every tracked session: with nobody opted in a watch
costs one ``SSCAN`` per shard. Ids in the index whose session is no longer tracked are
pruned by the watch. With a default policy every tracked session is read, in ``SSCAN``
batches (never one ``SMEMBERS``: see :meth:`SessionStore.iter_ids`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

from atlas_tasks import constants as C
from atlas_tasks.deps import Dependencies
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.service import SessionJob, SessionService
from atlas_tasks.specs import Capability, GpuUtilization

log = logging.getLogger(__name__)

#: Enqueue terminates: (session ids, reason), as the reaper's.
EnqueueTerminate = Callable[[list[str], str], None]

#: Sessions read per pipeline.
WATCH_BATCH = 500

_OPT_FIELDS = ("status", "provider", "compute_id", "gpu_idle_below_pct", "gpu_idle_window_ms")


@dataclass(frozen=True)
class IdlePolicy:
    """A session's GPU-idle rule: every GPU below ``below_pct`` for ``window_ms``."""

    below_pct: float
    window_ms: int

    @classmethod
    def of(cls, record: SessionRecord, default: IdlePolicy | None) -> IdlePolicy | None:
        """The record's own rule, else the settings' one (``None``: not opted in)."""
        below = record.gpu_idle_below_pct
        window = record.gpu_idle_window_ms
        if below is None and window is None:
            return default
        below = below if below is not None else (default.below_pct if default else None)
        window = window if window is not None else (default.window_ms if default else None)
        if below is None or window is None:
            return None
        return cls(float(below), int(window))

    def idle(self, gpus: list[GpuUtilization] | None) -> bool:
        """Whether a reading shows every GPU below the threshold. No reading (``None``,
        an empty list, or a GPU without a figure) is never idle."""
        if not gpus:
            return False
        return all(g.util_pct is not None and g.util_pct < self.below_pct for g in gpus)


@dataclass
class WatchReport:
    """What one watch did."""

    #: Opted-in running sessions whose utilisation was read.
    polled: list[str] = field(default_factory=list)
    #: Sessions whose GPUs were all idle at this watch.
    idle: list[str] = field(default_factory=list)
    #: Sessions whose terminate was enqueued (idle for the whole window).
    reaped: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """JSON-safe counts for the task result."""
        return {
            "polled": len(self.polled),
            "idle": len(self.idle),
            "reaped": self.reaped,
            "errors": self.errors,
        }


class GpuIdleWatcher(SessionJob):
    """Polls utilisation of opted-in sessions and reaps the idle ones (module doc).

    Args:
        deps: Redis, settings, providers.
        service: builds a session's provider client (its per-call key included).
    """

    def __init__(self, deps: Dependencies, service: SessionService | None = None) -> None:
        super().__init__(deps, service)
        s = deps.settings
        self.default = (
            IdlePolicy(float(s.gpu_idle_below_pct), int(s.gpu_idle_window_ms))
            if s.gpu_idle_below_pct is not None and s.gpu_idle_window_ms
            else None
        )

    def watch(self, enqueue_terminate: EnqueueTerminate) -> WatchReport:
        """One pass over the opted-in sessions (see the module docstring)."""
        report = WatchReport()
        self._backfill_index_once()
        marks = cast(dict[str, str], self.r.hgetall(self.ks.key(C.GPU_IDLE_SINCE_KEY)))
        if marks:
            # Marks of sessions no longer tracked (ended, expired) are dropped.
            ids = list(marks)
            stale = [
                sid for sid, on in zip(ids, self.store.tracked_flags(ids), strict=True) if not on
            ]
            if stale:
                self.r.hdel(self.ks.key(C.GPU_IDLE_SINCE_KEY), *stale)
        # The opt-in index is pruned on every watch (with a default policy too, or it
        # would keep every ended opted-in session); without a default policy it is also
        # the whole of what is watched.
        batches: Iterator[list[str]]
        if self.default is None:
            batches = self._watch_index_batches()
        else:
            for _ in self._watch_index_batches():  # prune only
                pass
            batches = self.store.iter_ids(WATCH_BATCH)
        for batch in batches:
            for sid, partial in zip(batch, self.store.get_fields(batch, *_OPT_FIELDS), strict=True):
                if (
                    partial is None
                    or partial.status != SessionStatus.RUNNING
                    or not partial.compute_id
                ):
                    continue
                policy = IdlePolicy.of(partial, self.default)
                if policy is None:
                    continue
                self._check(sid, policy, report)
        if report.reaped:
            log.info(
                "GPU-idle reaping: %d session(s) idle past their window: %s",
                len(report.reaped),
                ", ".join(report.reaped[:20]),
            )
            enqueue_terminate(report.reaped, C.GPU_IDLE_REASON)
        return report

    def _backfill_index_once(self) -> None:
        # Sessions that opted in before the index existed (recorded by an older version)
        # are added to it by one batched pass over the tracked sessions, once per
        # deployment; without it they would never be watched after an upgrade.
        done_key = self.ks.key(C.GPU_WATCH_BACKFILLED_KEY)
        if self.r.exists(done_key):
            return
        added = 0
        for batch in self.store.iter_ids(WATCH_BATCH):
            fields = self.store.get_fields(batch, "gpu_idle_below_pct", "gpu_idle_window_ms")
            opted = [sid for sid, rec in zip(batch, fields, strict=True) if rec is not None]
            for sid in opted:
                self.r.sadd(self.store.names_of(sid).gpu_watch, sid)
            added += len(opted)
        self.r.set(done_key, str(added))
        if added:
            log.info("GPU-idle watch: indexed %d session(s) recorded before the index", added)

    def _watch_index_batches(self) -> Iterator[list[str]]:
        # The opted-in ids still tracked, batch by batch; the others leave the index (a
        # session leaves the tracked set only when it ends, and its id is never reused).
        for batch in self.store.iter_gpu_watch_ids(WATCH_BATCH):
            flags = self.store.tracked_flags(batch)
            gone = [sid for sid, on in zip(batch, flags, strict=True) if not on]
            if gone:
                with self.r.pipeline(transaction=False) as pipe:
                    for sid in gone:
                        pipe.srem(self.store.names_of(sid).gpu_watch, sid)
                    pipe.execute()
            live = [sid for sid, on in zip(batch, flags, strict=True) if on]
            if live:
                yield live

    def _check(self, session_id: str, policy: IdlePolicy, report: WatchReport) -> None:
        record = self.store.get(session_id)
        if record is None or record.status != SessionStatus.RUNNING or not record.compute_id:
            return
        try:
            provider = self.service.provider_for(record)
            if str(Capability.GPU_UTILIZATION) not in provider.capabilities():
                return  # no utilisation from this provider: never idle-reaped
            gpus = provider.get_compute(record.compute_id).gpu_utilization
        except Exception as exc:
            # A failed read is no reading: the mark is cleared, never taken as idleness.
            report.errors.append(f"{session_id}: {type(exc).__name__}: {exc}")
            log.warning("GPU-idle watch: reading %s failed: %s", session_id, exc)
            self.r.hdel(self.ks.key(C.GPU_IDLE_SINCE_KEY), session_id)
            return
        report.polled.append(session_id)
        if not policy.idle(gpus):
            self.r.hdel(self.ks.key(C.GPU_IDLE_SINCE_KEY), session_id)
            return
        report.idle.append(session_id)
        now = self.store.now_ms()
        self.r.hsetnx(self.ks.key(C.GPU_IDLE_SINCE_KEY), session_id, now)
        since = int(self.r.hget(self.ks.key(C.GPU_IDLE_SINCE_KEY), session_id) or now)
        if now - since >= policy.window_ms:
            report.reaped.append(session_id)

    def idle_since(self, session_id: str) -> int | None:
        """When the session's GPUs were first seen all idle (ms), or ``None``."""
        value = self.r.hget(self.ks.key(C.GPU_IDLE_SINCE_KEY), session_id)
        return None if value is None else int(value)


__all__ = ["EnqueueTerminate", "GpuIdleWatcher", "IdlePolicy", "WATCH_BATCH", "WatchReport"]
