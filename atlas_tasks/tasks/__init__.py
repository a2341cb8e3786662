"""Thin Celery tasks: each one calls one function of the lifecycle/reaper/jobs layers.

Task modules never import :mod:`atlas_tasks.celery_app`; they use ``shared_task`` so the
app that loads them (workers, tests) owns them. Names are stable: see
:mod:`atlas_tasks.constants` (``atlas.compute.spawn``...).
"""

from __future__ import annotations

import random


def backoff_s(attempt: int, *, base: float = 1.0, cap: float = 30.0) -> float:
    """Exponential backoff with jitter: ``min(cap, base·2^attempt)`` scaled by 0.5–1.0.

    Jitter keeps a burst of failed tasks from retrying in lockstep against a provider
    that is already rate limiting us.
    """
    return float(min(cap, base * (2 ** attempt)) * random.uniform(0.5, 1.0))
