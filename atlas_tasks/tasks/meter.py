"""Beat tasks of the cost guardrails: ``atlas.sessions.meter`` (live cost meter),
``atlas.sessions.reconcile_billing`` (meter vs provider billing) and
``atlas.sessions.gpu_watch`` (GPU-idle reaping). See :mod:`atlas_tasks.sessions.meter`
and :mod:`atlas_tasks.sessions.gpu_idle`.

Like the reaper's sweep they are cheap to repeat and quiet: no stored result, no task
events, no Celery log lines unless they did something. Each run first takes a
``SET NX PX`` throttle (expiry counted by the Redis server), so two beats, or a backlog
left by a worker outage, cost one run per period. Correctness never rests on the throttle:
the meter's per-session watermark charges each session-minute once whatever runs it, and
a GPU-idle terminate is fenced and idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from atlas_tasks import constants as C
from atlas_tasks.deps import Dependencies
from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.sessions.gpu_idle import GpuIdleWatcher
from atlas_tasks.sessions.meter import CostMeter
from atlas_tasks.tasks.reaper import enqueue_terminate, in_sweep, throttle_ms

log = logging.getLogger(__name__)


def _throttled(deps: Dependencies, key: str, period_ms: int) -> bool:
    # A throttle (SET NX PX "1"), not a lock: nothing releases it; it only spaces runs.
    name = keyspace(deps.settings.namespace).key(key)
    return not deps.redis.set(name, "1", nx=True, px=throttle_ms(period_ms))


@shared_task(name=C.TASK_METER, ignore_result=True, send_events=False)
def meter() -> dict[str, Any]:
    """Charge every running session's elapsed minutes (``cost`` events, spend)."""
    deps = Dependencies.default()
    if _throttled(deps, C.METER_THROTTLE_KEY, deps.settings.meter_interval_ms):
        return {"skipped": True}
    summary = CostMeter(deps).meter().summary()
    if summary["metered"]:
        log.info("cost meter: %s", summary)
    return summary


@shared_task(name=C.TASK_RECONCILE_BILLING, ignore_result=True, send_events=False)
def reconcile_billing() -> dict[str, Any]:
    """Compare accrued costs with provider billing (``cost_drift`` events, metrics)."""
    deps = Dependencies.default()
    if _throttled(deps, C.RECONCILE_THROTTLE_KEY, deps.settings.billing_reconcile_interval_ms):
        return {"skipped": True}
    token = in_sweep.set(True)  # its billing request is not worth an INFO line
    try:
        summary = CostMeter(deps).reconcile().summary()
    finally:
        in_sweep.reset(token)
    if summary["errors"]:
        log.warning("billing reconciliation: %s", summary)
    elif summary["sessions"]:
        log.info("billing reconciliation: %s", summary)
    return summary


@shared_task(name=C.TASK_GPU_WATCH, ignore_result=True, send_events=False)
def gpu_watch() -> dict[str, Any]:
    """Poll opted-in sessions' GPU utilisation; enqueue ``gpu_idle`` terminates."""
    deps = Dependencies.default()
    if _throttled(deps, C.GPU_WATCH_THROTTLE_KEY, deps.settings.gpu_watch_interval_ms):
        return {"skipped": True}
    token = in_sweep.set(True)  # one utilisation read per opted-in session, every period
    try:
        summary = GpuIdleWatcher(deps).watch(enqueue_terminate).summary()
    finally:
        in_sweep.reset(token)
    if summary["errors"]:
        log.warning("GPU-idle watch: %s", summary)
    return summary


__all__ = ["gpu_watch", "meter", "reconcile_billing"]
