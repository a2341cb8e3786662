"""Flower monitoring: ``python -m workers.flower [extra flower options]``.

Listens on ``FLOWER_PORT`` (default 5555) and ``FLOWER_ADDRESS`` (default 127.0.0.1; the
compose file sets 0.0.0.0 inside the container and publishes it on the host's loopback).
Flower reads its other options from ``FLOWER_*`` variables: ``FLOWER_BASIC_AUTH``
(``user:password``) protects the UI and opens the HTTP API, which answers 401 without
auth unless ``FLOWER_UNAUTHENTICATED_API=true``. Task arguments shown there are the
redacted ``argsrepr`` atlas sends: never a token or an API key.
"""

from __future__ import annotations

import os
import sys

from atlas_tasks.celery_app import app


def argv(extra: list[str]) -> list[str]:
    """The Celery command line this entry point runs."""
    port = os.environ.get("FLOWER_PORT", "5555")
    address = os.environ.get("FLOWER_ADDRESS", "127.0.0.1")
    return ["flower", f"--port={port}", f"--address={address}", *extra]


def main(extra: list[str] | None = None) -> None:
    """Run Flower in the foreground."""
    app.start(argv(sys.argv[1:] if extra is None else extra))


if __name__ == "__main__":
    main()
