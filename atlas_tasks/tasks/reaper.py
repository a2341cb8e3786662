"""``atlas.reaper.reap``: the beat-scheduled sweep (see :mod:`atlas_tasks.sessions.reaper`).

The sweep is the most frequent task of a deployment (every ``ATLAS_REAP_INTERVAL_MS``,
one second by default), so it is built to be cheap and quiet:

* **No wall-clock expiry.** Beat sends it without ``expires``: an absolute expiry written
  with beat's clock and checked with the worker's made every sweep look revoked as soon as
  beat ran a few seconds behind. Staleness is judged here instead, with Redis's clock only.
* **One sweep per interval, cluster-wide.** Each run first takes a ``SET NX PX`` throttle
  key (expiry counted by the Redis server, so no process clock is involved). A backlog
  left by a worker outage, or two beats sending during a lock handover, drains as no-ops
  instead of N sweeps back to back.
* **Quiet.** No stored result (``ignore_result``), no task events (Flower's task list is
  not drowned), and Celery's "received"/"succeeded" lines for it are filtered out by
  :mod:`atlas_tasks.celery_app`. A sweep that did something logs one INFO line; one that
  found nothing logs nothing. :data:`LAST_SWEEP_KEY` records the last sweep for operators.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from typing import Any

import redis
from celery import shared_task

from atlas_tasks import constants as C
from atlas_tasks import task_reprs
from atlas_tasks.deps import Dependencies
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.sessions.reaper import SessionReaper
from atlas_tasks.tasks.compute import spawn, terminate_batch, terminate_orphan

log = logging.getLogger(__name__)

#: ``SET NX PX`` throttle: a sweep runs only if no other sweep started within the last
#: :func:`throttle_ms` (measured by the Redis server's clock).
SWEEP_THROTTLE_KEY = "atlas:reaper:throttle"
#: JSON of the last sweep that ran: ``{"at_ms": <Redis time>, ...its counts}``. Kept
#: because sweep results are not stored in the result backend.
LAST_SWEEP_KEY = "atlas:reaper:last-sweep"
#: Hash of running totals: ``sweeps`` (ran), ``skipped`` (throttled or overlapping),
#: ``due`` (idle sessions claimed by sweeps), ``orphans``.
SWEEP_STATS_KEY = "atlas:reaper:stats"


#: True while this thread/context runs a sweep: its provider listing's HTTP lines are
#: dropped by :class:`SweepHttpLogFilter` (the sweep reports what it found itself).
in_sweep: ContextVar[bool] = ContextVar("atlas_in_sweep", default=False)


class SweepHttpLogFilter(logging.Filter):
    """Drop httpx's INFO "HTTP Request: ..." lines logged on behalf of a sweep."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for INFO-or-below records emitted inside a sweep."""
        return record.levelno > logging.INFO or not in_sweep.get()


_http_filter = SweepHttpLogFilter()
if _http_filter not in logging.getLogger("httpx").filters:
    logging.getLogger("httpx").addFilter(_http_filter)


def throttle_ms(reap_interval_ms: int) -> int:
    """Minimum gap between two sweeps: 3/4 of the beat period, so a sweep delivered a
    little early still runs while a backlog drained within that window does not."""
    return max(50, reap_interval_ms * 3 // 4)


def enqueue_terminate(session_ids: list[str], reason: str) -> None:
    """Queue terminates of tracked sessions, ``IDLE_BATCH_MAX`` per task."""
    for start in range(0, len(session_ids), C.IDLE_BATCH_MAX):
        chunk = session_ids[start : start + C.IDLE_BATCH_MAX]
        terminate_batch.apply_async((chunk, reason), **task_reprs.terminate_batch(chunk, reason))


def enqueue_orphan(provider: str, compute_id: str, pod_name: str | None) -> None:
    """Queue the termination of an untracked prefixed pod."""
    terminate_orphan.apply_async(
        (provider, compute_id, pod_name),
        **task_reprs.terminate_orphan(provider, compute_id, pod_name),
    )


def enqueue_spawn(session_id: str, sealed: str) -> None:
    """Re-send a spawn whose message was lost (its payload stays sealed in transit)."""
    spawn.apply_async((session_id, sealed), **task_reprs.spawn(session_id, reason="resend"))


def _record(r: redis.Redis, summary: dict[str, Any]) -> None:
    seconds, micros = r.time()
    summary = {"at_ms": int(seconds) * 1000 + int(micros) // 1000, **summary}
    stats = keyspace().key(SWEEP_STATS_KEY)
    with r.pipeline(transaction=False) as pipe:
        pipe.set(keyspace().key(LAST_SWEEP_KEY), json.dumps(summary))
        if summary.get("skipped"):
            pipe.hincrby(stats, "skipped", 1)
        else:
            pipe.hincrby(stats, "sweeps", 1)
            pipe.hincrby(stats, "due", int(summary.get("due") or 0))
            pipe.hincrby(stats, "orphans", len(summary.get("orphans") or []))
        pipe.execute()


def _did_something(summary: dict[str, Any]) -> bool:
    return bool(
        summary.get("due")
        or summary.get("resent_spawns")
        or summary.get("stale_intents")
        or summary.get("orphans")
        or summary.get("errors")
    )


@shared_task(name=C.TASK_REAP, ignore_result=True, send_events=False)
def reap() -> dict[str, Any]:
    """One reaper sweep, unless another one ran within :func:`throttle_ms`; returns its
    counts (``{"skipped": True, "throttled": True}`` when throttled)."""
    deps = Dependencies.default()
    r = deps.redis
    ks = keyspace(deps.settings.namespace)
    if not r.set(
        ks.key(SWEEP_THROTTLE_KEY), "1", nx=True, px=throttle_ms(deps.settings.reap_interval_ms)
    ):
        r.hincrby(ks.key(SWEEP_STATS_KEY), "skipped", 1)
        return {"skipped": True, "throttled": True}
    token = in_sweep.set(True)
    try:
        report = SessionReaper(deps).reap(
            enqueue_terminate=enqueue_terminate,
            enqueue_orphan=enqueue_orphan,
            enqueue_spawn=enqueue_spawn,
        )
    finally:
        in_sweep.reset(token)
    summary = report.summary()
    _record(r, summary)
    if summary.get("errors"):
        log.warning("reaper sweep: %s", summary)
    elif _did_something(summary):
        log.info("reaper sweep: %s", summary)
    return summary
