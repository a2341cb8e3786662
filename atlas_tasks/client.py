"""The caller-side orchestrator API (DESIGN.md name; also :mod:`atlas_tasks.orchestrator`).

It lives in :mod:`atlas_tasks.sessions.client`; this module is its documented public path
and exports exactly that module's ``__all__``.
"""

from atlas_tasks.sessions.client import *  # noqa: F403 - the public path of that module
from atlas_tasks.sessions.client import __all__ as __all__
