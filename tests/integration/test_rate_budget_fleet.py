"""Several real processes share one fleet rate budget (real redis-server, fake cloud).

Each worker process is a fresh interpreter building the RunPod provider from ``ATLAS_*``
settings (``ATLAS_RATE_BUDGET=true``), waiting for a common start time, then listing pods.
Started together, three processes with a 10 requests/s budget must together take at least
the time the *shared* bucket allows; and a pause put on the bucket (what a 429's
``Retry-After`` does) holds back every process's first request.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from atlas_tasks.providers.budget import RateBudget, fingerprint
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.fakecloud import FakeCloud

pytestmark = pytest.mark.integration

WORKER = """
import json, sys, time
from atlas_tasks.config import AtlasSettings
from atlas_tasks.providers.registry import get_provider

start_at, calls = float(sys.argv[1]), int(sys.argv[2])
provider = get_provider("runpod", settings=AtlasSettings(), cache=False)
while time.time() < start_at:
    time.sleep(0.005)
done = []
for _ in range(calls):
    provider.list_compute()
    done.append(time.time())
provider.close()
print(json.dumps(done))
"""

PROCESSES = 3
CALLS = 10


def test_processes_share_one_budget_and_its_pause(cloud: FakeCloud, redis_url: str) -> None:
    env = {
        **os.environ,
        **cloud.env(),
        "ATLAS_REDIS_URL": redis_url,
        "ATLAS_RATE_BUDGET": "true",
        "ATLAS_RATE_BUDGET_BURST": "2",
        "ATLAS_RATE_BUDGET_PER_MINUTE": json.dumps({"runpod": 600}),
    }
    # Every process starts its calls at the same moment, once their imports are done.
    start_at = time.time() + 4.0
    budget = RateBudget(
        get_redis(redis_url),
        provider="runpod",
        api="management",
        key_fingerprint=fingerprint(cloud.api_key),
        per_minute=600,
    )
    # As if a 429 had said Retry-After: 1.5 s after the common start.
    budget.pause(int((start_at + 1.5 - time.time()) * 1000))
    paused_until = start_at + 1.5
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(start_at), str(CALLS)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    stamps: list[list[float]] = []
    for worker in workers:
        out, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        stamps.append(json.loads(out.strip().splitlines()[-1]))
    first = min(s[0] for s in stamps)
    last = max(s[-1] for s in stamps)
    # Nobody went before the fleet-wide pause ended.
    assert first >= paused_until - 0.05
    # 30 calls through one bucket of 2 refilled at 10/s take >= 2.8 s (three separate
    # buckets would have allowed all of it in about 0.8 s).
    assert last - first >= 2.4, stamps
    assert cloud.state()["totals"].get("rate_limited", 0) == 0
    assert cloud.state()["totals"]["lists"] == PROCESSES * CALLS
