"""The page's CSS and JavaScript (plain files in ``static/``, no build step).

Both are inlined into the page with a per-response CSP nonce, so the page needs no static
route (and so no unauthenticated one). The script renders everything with
``textContent`` (never ``innerHTML`` with data), keeps the session table live from the
server-sent events of ``api/events`` (a full ``snapshot`` on every (re)connect, then
``changes``), ticks the idle/TTL/accrued cells once a second on the server's clock, and
sends every action as a ``POST`` carrying the CSRF token in the header named by
``<body data-csrf-header>``.
"""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def _read(name: str) -> str:
    return (resources.files("atlas_tasks.dashboard") / "static" / name).read_text("utf-8")


def css() -> str:
    """The page's stylesheet."""
    return _read("dashboard.css")


def js() -> str:
    """The page's script."""
    return _read("dashboard.js")


__all__ = ["css", "js"]
