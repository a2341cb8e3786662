"""Pieces every web adapter of the ops page shares: error statuses, SSE framing, and the
per-viewer event stream of the synchronous (WSGI) adapters.

The standalone Starlette app runs one shared reader for all viewers
(:class:`atlas_tasks.dashboard.app.LiveFeed`). A Django or Flask view cannot share one
across worker processes, so each open page there gets :func:`poll_stream`: its own
:class:`~atlas_tasks.dashboard.service.LiveTable` re-read every poll interval. Each
stream ends after ``max_seconds`` so it does not hold a WSGI worker forever; the
browser's ``EventSource`` reconnects by itself and gets a fresh snapshot.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from atlas_tasks.dashboard.service import DashboardService, LiveTable
from atlas_tasks.errors import AtlasError

#: HTTP status of each error kind a route can answer (others: 500).
HTTP_STATUS = {
    "validation": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "rate_limited": 429,
    "timeout": 504,
    "transport": 503,
    "unsupported": 501,
}
#: Seconds between keep-alive ``clock`` events on an idle event stream.
KEEPALIVE_S = 15.0
#: Session actions by URL name.
SESSION_ACTIONS = ("touch", "stop", "terminate")


def error_body(exc: AtlasError) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, JSON body)`` of an error answered to the page."""
    return HTTP_STATUS.get(exc.kind, 500), {
        "error": {"kind": exc.kind, "message": exc.message or str(exc)}
    }


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def session_action(service: DashboardService, action: str) -> Callable[[str, str], dict[str, Any]]:
    """The service method behind ``POST .../sessions/{id}/{action}``.

    Raises:
        AtlasError: (``not_found``) an unknown action.
    """
    if action not in SESSION_ACTIONS:
        raise AtlasError(f"unknown action {action!r}", kind="not_found")
    method: Callable[[str, str], dict[str, Any]] = getattr(service, action)
    return method


def poll_stream(
    service: DashboardService,
    *,
    poll_interval_ms: int = 500,
    linger_ms: int = 60_000,
    max_seconds: float = 300.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[str]:
    """SSE text for one viewer of a synchronous adapter: a ``snapshot``, then ``changes``
    every poll interval (ends after ``max_seconds``; the browser reconnects)."""
    table = LiveTable(service, linger_ms=linger_ms)
    table.refresh()
    yield sse("snapshot", table.snapshot())
    started = last_sent = time.monotonic()
    while time.monotonic() - started < max_seconds:
        sleep(poll_interval_ms / 1000)
        changes = table.refresh()
        if changes:
            yield sse("changes", {"now_ms": table.now_ms, "changes": changes})
            last_sent = time.monotonic()
        elif time.monotonic() - last_sent >= KEEPALIVE_S:
            yield sse("clock", {"now_ms": table.now_ms})
            last_sent = time.monotonic()


__all__ = [
    "HTTP_STATUS",
    "KEEPALIVE_S",
    "SESSION_ACTIONS",
    "error_body",
    "poll_stream",
    "session_action",
    "sse",
]
