"""Alias of :mod:`atlas_tasks.client`, the caller-side orchestrator API (DESIGN.md name)."""

from atlas_tasks.client import (
    NotTracked,
    Session,
    SessionInfo,
    info,
    list_ids,
    spawn,
    stop_tracked,
    touch,
)

__all__ = ["NotTracked", "Session", "SessionInfo", "info", "list_ids", "spawn",
           "stop_tracked", "touch"]
