"""A fake cloud speaking RunPod's real wire formats, with fault injection.

Tests run it in a thread::

    from atlas_tasks.testing.fakecloud import FakeCloud

    with FakeCloud(latency_s=0.01) as cloud:
        cloud.runpod_rest_url      # http://127.0.0.1:<port>/runpod (REST v2: /v2/pods...)
        cloud.fail_next("POST /pods", 500, after_create=True)

The CLI runs it in the foreground with :func:`serve` (``atlas-tasks fakecloud --port N``).
Module map: ``config`` (settings), ``faults`` (injection), ``ratelimit`` (the per-key
quota), ``state`` (pods, counters), ``runpod_rest`` (REST v2) / ``runpod_runtime`` (the
RunPod APIs), ``lambda_labs``, ``vast``, ``fly_machines`` / ``fly_logs``, ``providers``
(each provider behind one protocol — routes, reset, snapshot, age — in one list),
``admin`` (``/_admin``), ``app`` (:func:`create_app`), ``server`` (:class:`FakeCloud`,
:func:`serve`).
"""

from atlas_tasks.testing.fakecloud.app import create_app
from atlas_tasks.testing.fakecloud.config import (
    DEFAULT_API_KEY,
    FakeCloudConfig,
    FaultSettings,
    ScriptRule,
    split_options,
)
from atlas_tasks.testing.fakecloud.server import FakeCloud, serve

__all__ = [
    "DEFAULT_API_KEY",
    "FakeCloud",
    "FakeCloudConfig",
    "FaultSettings",
    "ScriptRule",
    "create_app",
    "serve",
    "split_options",
]
