"""Test-only crash points for the kill tests and the chaos suite.

``ATLAS_FAULT_KILL_AT=after_create`` makes the process that reaches that point SIGKILL
itself, once per Redis (a ``SET NX`` marker), so a redelivered task runs normally.
Unset (the default) this is one environment lookup and nothing else.
"""

from __future__ import annotations

import os
import signal

from atlas_tasks.keyspace_names import keyspace
from atlas_tasks.redis_conn import get_redis

#: Points in the spawn/terminate paths where a crash can be injected.
FAULT_POINTS = ("after_create", "before_registry_write", "after_terminate_call")


def fault_point(name: str) -> None:
    """SIGKILL this process if ``ATLAS_FAULT_KILL_AT`` names this point (first time only)."""
    wanted = os.environ.get("ATLAS_FAULT_KILL_AT")
    if not wanted or name not in wanted.split(","):
        return
    marker = keyspace().key("atlas:test:fault-fired:{name}").format(name=name)
    if get_redis().set(marker, "1", nx=True, ex=3600):
        os.kill(os.getpid(), signal.SIGKILL)
