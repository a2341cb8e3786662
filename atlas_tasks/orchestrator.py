"""Alias of :mod:`atlas_tasks.client`, the caller-side orchestrator API (DESIGN.md name);
both re-export :mod:`atlas_tasks.sessions.client`."""

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
