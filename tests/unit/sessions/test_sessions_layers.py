"""The session core's layering: records, store, service, reaper and the expiry listener
never import Celery (the thin tasks in ``atlas_tasks.tasks`` do), and the client imports
it only when it enqueues."""

from __future__ import annotations

import subprocess
import sys

import pytest

CORE = ["records", "store", "service", "reaper", "expiry_listener", "client"]


@pytest.mark.parametrize("module", CORE)
def test_session_core_does_not_import_celery(module: str) -> None:
    code = (
        "import sys\n"
        f"import atlas_tasks.sessions.{module}\n"
        "bad = sorted(m for m in sys.modules if m == 'celery' or m.startswith('celery.')\n"
        "             or m.startswith('atlas_tasks.tasks') or m == 'atlas_tasks.celery_app')\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"atlas_tasks.sessions.{module} imports {out.stdout}"


def test_old_session_modules_are_gone() -> None:
    import importlib.util

    for old in ("registry", "lifecycle", "reaper", "keyspace"):
        assert importlib.util.find_spec(f"atlas_tasks.{old}") is None, old
