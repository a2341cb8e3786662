"""Thin Celery tasks: each one calls one service method (sessions, jobs, fly).

Task modules never import :mod:`atlas_tasks.celery_app`; they use ``shared_task`` so the
app that loads them (workers, tests) owns them. Names are stable: see
:mod:`atlas_tasks.constants` (``atlas.compute.spawn``...).
"""

from __future__ import annotations

import logging
import random
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Task

log = logging.getLogger(__name__)


def backoff_s(attempt: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: ``min(cap, base·2^attempt)`` scaled by 0.5–1.0.

    Jitter keeps a burst of failed tasks from retrying in lockstep against a provider
    that is already rate limiting us.
    """
    return float(min(cap, base * (2 ** attempt)) * random.uniform(0.5, 1.0))


def retry_with_backoff(task: Task, exc: BaseException, *, retryable: bool, max_retries: int,
                       what: str) -> None:
    """The one retry policy of the compute tasks: when ``retryable`` and fewer than
    ``max_retries`` retries were made, raise Celery's ``Retry`` after :func:`backoff_s`
    (logged at WARNING); otherwise return, and the task gives up its own way.

    The cap is a setting read at run time (``ATLAS_SPAWN_MAX_RETRIES``...), which is why
    this is not Celery's ``autoretry_for``/``max_retries`` (fixed when the task is
    declared, and unable to hand the exhausted case to the service).
    """
    retries = int(task.request.retries or 0)
    if retryable and retries < max_retries:
        log.warning("%s attempt %d failed (%s); retrying", what, retries + 1, exc)
        raise task.retry(countdown=backoff_s(retries)) from None
