"""Alias of :mod:`atlas_tasks.client`, the caller-side orchestrator API (DESIGN.md name);
both re-export :mod:`atlas_tasks.sessions.client` (its ``__all__``, nothing else)."""

from atlas_tasks.sessions.client import *  # noqa: F403 - the public path of that module
from atlas_tasks.sessions.client import __all__ as __all__
