"""Celery worker: ``python -m workers.worker [extra celery worker options]``.

Runs ``worker -E`` (task events for Flower) on every atlas queue with the pool and
concurrency of ``ATLAS_WORKER_POOL`` / ``ATLAS_WORKER_CONCURRENCY`` (threads × 128 by
default: provider calls are I/O bound; docker-compose runs two processes × 64 per node).
Extra arguments are passed to Celery and win. At start the worker warns when its Redis has
no persistence (see README, Redis persistence).
"""

from __future__ import annotations

import sys

from atlas_tasks.celery_app import app, worker_queues
from atlas_tasks.config import get_settings

#: The queues of the default namespace; ``argv`` uses those of ``ATLAS_NAMESPACE``.
QUEUES = "compute,jobs,fly,maintenance"


def argv(extra: list[str]) -> list[str]:
    """The Celery command line this entry point runs."""
    settings = get_settings()
    return [
        "worker",
        "-E",
        "-P",
        settings.worker_pool,
        "-c",
        str(settings.worker_concurrency),
        "-Q",
        ",".join(worker_queues()),
        "--loglevel",
        "INFO",
        *extra,
    ]


def main(extra: list[str] | None = None) -> None:
    """Run the worker in the foreground."""
    app.worker_main(argv(sys.argv[1:] if extra is None else extra))


if __name__ == "__main__":
    main()
