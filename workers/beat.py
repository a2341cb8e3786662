"""Celery beat: ``python -m workers.beat [extra celery beat options]``.

Uses the redbeat scheduler configured in :mod:`atlas_tasks.celery_app`
(:class:`atlas_tasks.beat.AtlasRedBeatScheduler`): the schedule and a single-beat lock
live in Redis, so starting a second beat by mistake only adds a standby that takes over
when the first one dies (lock timeout: 5 × ``ATLAS_REAP_INTERVAL_MS``, at least 5 s). A
Redis outage or restart does not end beat: it waits, then takes its lock again.
"""

from __future__ import annotations

import os
import sys

from atlas_tasks.celery_app import app


def argv(extra: list[str]) -> list[str]:
    """The Celery command line this entry point runs."""
    # -s: redbeat keeps no local schedule file; point the unused one at /dev/null.
    return ["beat", "--loglevel", "INFO", "-s", os.devnull, *extra]


def main(extra: list[str] | None = None) -> None:
    """Run beat in the foreground."""
    app.start(argv(sys.argv[1:] if extra is None else extra))


if __name__ == "__main__":
    main()
