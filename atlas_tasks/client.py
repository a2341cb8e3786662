"""The caller-side orchestrator API (DESIGN.md name; also :mod:`atlas_tasks.orchestrator`).

It lives in :mod:`atlas_tasks.sessions.client`; this module is its documented public path.
"""

from atlas_tasks.sessions.client import (
    NotTracked,
    Session,
    SessionInfo,
    ainfo,
    alist_sessions,
    aspawn,
    astop_tracked,
    atouch,
    await_running,
    info,
    list_ids,
    list_sessions,
    spawn,
    stop_tracked,
    touch,
    wait,
)

__all__ = [
    "NotTracked",
    "Session",
    "SessionInfo",
    "ainfo",
    "alist_sessions",
    "aspawn",
    "astop_tracked",
    "atouch",
    "await_running",
    "info",
    "list_ids",
    "list_sessions",
    "spawn",
    "stop_tracked",
    "touch",
    "wait",
]
