"""Per-key request quota of the fake cloud, in RunPod REST v2's ``RateLimit`` format.

Every authenticated provider call is counted against a fixed one-minute window per (API,
key), opened by the key's first call after the previous window ended (so a test's calls do
not straddle a wall-clock minute by chance). RunPod REST v2, the RunPod runtime, Lambda,
Vast and Fly each count their own.
With a quota configured (``FakeCloud(rate_limit_per_minute=60)``, or at run time with
``POST /_admin/rate-limit {"per_minute": 60}``), the call past the quota answers **429**
with ``Retry-After`` = the seconds until the window resets. RunPod REST v2 answers (429s
included) carry the live state as the definition documents it::

    RateLimit:        "minute";r=<remaining>;t=<seconds to reset>
    RateLimit-Policy: "minute";q=<quota>;w=60

Without a quota the fake never refuses and reports :data:`UNENFORCED_QUOTA` (so clients
that read the headers still see a plausible policy).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Any

#: Per-minute quota reported when none is enforced.
UNENFORCED_QUOTA = 600

#: Length of the fixed window, seconds.
WINDOW_S = 60


@dataclass(frozen=True)
class Verdict:
    """One call's place in its window.

    Attributes:
        allowed: False when the call is over the quota (answer 429).
        remaining: calls left in the window after this one.
        reset_s: whole seconds until the window resets (1..60).
        quota: the window's quota (reported in ``RateLimit-Policy``).
    """

    allowed: bool
    remaining: int
    reset_s: int
    quota: int

    def headers(self) -> dict[str, str]:
        """``RateLimit`` / ``RateLimit-Policy`` as RunPod REST v2 sends them."""
        return {
            "RateLimit": f'"minute";r={self.remaining};t={self.reset_s}',
            "RateLimit-Policy": f'"minute";q={self.quota};w={WINDOW_S}',
        }


class KeyRateLimiter:
    """Fixed one-minute windows per (API, key); thread-safe.

    Args:
        per_minute: the quota enforced per key and API, or ``None`` for none.
    """

    def __init__(self, per_minute: int | None = None) -> None:
        self._startup = per_minute
        self.per_minute = per_minute
        self._lock = threading.Lock()
        #: (api, key) → (window start, calls in it).
        self._windows: dict[tuple[str, str], tuple[float, int]] = {}
        #: 429s sent per API (``rest``, ``lambda``...).
        self.refused: Counter[str] = Counter()

    def take(self, api: str, key: str, now: float) -> Verdict:
        """Count one call of ``key`` on ``api`` at epoch ``now``."""
        with self._lock:
            quota = self.per_minute
            started, used = self._windows.get((api, key), (now, 0))
            if now >= started + WINDOW_S:
                started, used = now, 0
            reset = max(1, math.ceil(started + WINDOW_S - now))
            if quota is not None and used >= quota:
                self._windows[(api, key)] = (started, used)
                self.refused[api] += 1
                return Verdict(False, 0, reset, quota)
            used += 1
            self._windows[(api, key)] = (started, used)
        shown = quota if quota is not None else UNENFORCED_QUOTA
        return Verdict(True, max(0, shown - used), reset, shown)

    def set_quota(self, per_minute: int | None) -> None:
        """Change the enforced quota (``None``: stop enforcing); counts are kept."""
        if per_minute is not None and per_minute < 1:
            raise ValueError("per_minute must be a positive integer or null")
        with self._lock:
            self.per_minute = per_minute

    def reset(self) -> None:
        """Forget every window and count; the start-up quota applies again."""
        with self._lock:
            self._windows.clear()
            self.refused.clear()
            self.per_minute = self._startup

    def snapshot(self) -> dict[str, Any]:
        """``{"per_minute", "refused": {api: n}, "used": {"api:<key sha256[:8]>": n}}``
        (keys are shown hashed: the admin state never echoes a credential)."""
        with self._lock:
            used = {
                f"{api}:{hashlib.sha256(key.encode()).hexdigest()[:8]}": count
                for (api, key), (_, count) in self._windows.items()
            }
            return {"per_minute": self.per_minute, "refused": dict(self.refused), "used": used}


__all__ = ["UNENFORCED_QUOTA", "WINDOW_S", "KeyRateLimiter", "Verdict"]
