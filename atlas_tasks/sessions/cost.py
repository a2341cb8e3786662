"""What a session has cost so far: its pod's price per hour × the time it has run.

Pure functions of a :class:`~atlas_tasks.sessions.records.SessionRecord` and a time
(ms, Redis ``TIME``), shared by ``info()`` (``accrued_usd``), the cost meter
(:mod:`atlas_tasks.sessions.meter`) and the billing reconciliation. The running time is
counted from ``running_at_ms`` (when the registry saw the pod running) to
``ended_at_ms`` (when the provider confirmed it gone), or to *now* while it lives: a
``terminating`` session's pod is still billed.
"""

from __future__ import annotations

import math
from typing import Any

from atlas_tasks.sessions.records import SessionRecord

#: Milliseconds per hour.
MS_PER_HOUR = 3_600_000


def cost_per_hour(compute: dict[str, Any] | None) -> float | None:
    """The pod's USD per hour from the record's public compute, or ``None`` if unknown."""
    value = compute.get("cost_per_hour") if isinstance(compute, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def running_ms(record: SessionRecord, now_ms: int | None) -> int | None:
    """How long the session's pod has run (ms): ``running_at_ms`` → end, or → ``now_ms``.

    ``0`` for a session whose pod never ran; ``None`` for a live one when ``now_ms`` is
    not given.
    """
    if record.running_at_ms is None:
        return 0
    if record.ended:
        end = record.ended_at_ms if record.ended_at_ms is not None else now_ms
    else:
        end = now_ms
    if end is None:
        return None
    return max(0, end - record.running_at_ms)


def accrued_usd(record: SessionRecord, now_ms: int | None) -> float | None:
    """USD accrued by the session up to ``now_ms`` (Redis time): cost/h × running time.

    ``0.0`` when the pod never ran; ``None`` when its price is unknown (the provider
    reported none) or a live session's time is not given.
    """
    if record.running_at_ms is None:
        return 0.0
    cost = cost_per_hour(record.compute)
    elapsed = running_ms(record, now_ms)
    if cost is None or elapsed is None:
        return None
    return cost * elapsed / MS_PER_HOUR


__all__ = ["MS_PER_HOUR", "accrued_usd", "cost_per_hour", "running_ms"]
