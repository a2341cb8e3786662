"""``atlas.reaper.reap``: the beat-scheduled sweep (see :mod:`atlas_tasks.reaper`)."""

from __future__ import annotations

from typing import Any

from celery import shared_task

from atlas_tasks import constants as C
from atlas_tasks import reaper
from atlas_tasks.tasks.compute import spawn, terminate_batch, terminate_orphan


def enqueue_terminate(session_ids: list[str], reason: str) -> None:
    """Queue terminates of tracked sessions, ``IDLE_BATCH_MAX`` per task."""
    for start in range(0, len(session_ids), C.IDLE_BATCH_MAX):
        chunk = session_ids[start:start + C.IDLE_BATCH_MAX]
        terminate_batch.apply_async((chunk, reason), queue=C.QUEUE_COMPUTE)


def enqueue_orphan(provider: str, compute_id: str, pod_name: str | None) -> None:
    """Queue the termination of an untracked prefixed pod."""
    terminate_orphan.apply_async((provider, compute_id, pod_name), queue=C.QUEUE_COMPUTE)


def enqueue_spawn(session_id: str, sealed: str) -> None:
    """Re-send a spawn whose message was lost (its payload stays sealed in transit)."""
    spawn.apply_async((session_id, sealed), queue=C.QUEUE_COMPUTE,
                      argsrepr=repr((session_id, "<sealed>")), kwargsrepr="{}")


@shared_task(name=C.TASK_REAP)
def reap() -> dict[str, Any]:
    """One reaper sweep; returns its counts."""
    report = reaper.reap(enqueue_terminate=enqueue_terminate, enqueue_orphan=enqueue_orphan,
                         enqueue_spawn=enqueue_spawn)
    return report.summary()
