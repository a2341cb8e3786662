"""``python tests/integration/skewed_celery.py <skew seconds> <celery args...>``: run the
celery command line with this process's wall clock shifted by ``skew`` seconds.

Used by the beat resilience tests to run a real beat whose clock disagrees with the
workers'. ``time.time`` is replaced before Celery is imported (so its
``from time import time`` binds the shifted one) and ``Celery.now`` (what beat schedules
by and what an ``expires`` option is computed from) is shifted the same way.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

_real_time = time.time


def main() -> None:
    """Shift the clock by ``argv[1]`` seconds, then run ``celery argv[2:]``."""
    skew = float(sys.argv[1])
    time.time = lambda: _real_time() + skew

    from celery.__main__ import main as celery_main
    from celery.app.base import Celery

    real_now: Callable[[Any], datetime] = Celery.now

    def skewed_now(self: Any) -> datetime:
        return real_now(self) + timedelta(seconds=skew)

    Celery.now = skewed_now
    sys.argv = ["celery", *sys.argv[2:]]
    celery_main()


if __name__ == "__main__":
    main()
