"""Beat: redbeat's single-beat lock means one active beat; a standby takes over when the
active one dies, and reaping goes on."""

from __future__ import annotations

import time

import pytest

from atlas_tasks import constants as C
from atlas_tasks import orchestrator
from atlas_tasks.redis_conn import get_redis
from atlas_tasks.testing.localstack import LocalCluster, celery_beat

pytestmark = pytest.mark.integration


def test_standby_beat_takes_over_after_sigkill(cluster: LocalCluster) -> None:
    lock_key = f"{C.REDBEAT_KEY_PREFIX}:lock"
    r = get_redis()
    assert r.exists(lock_key), "the active beat holds the lock"
    standby = celery_beat(cluster.env).start()
    try:
        time.sleep(3)
        assert "Acquired lock" not in standby.log(), "two beats must never both run"
        assert cluster.beat is not None
        cluster.beat.kill()  # SIGKILL: the lock is not released, it must time out
        standby.wait_for("Acquired lock", timeout=40)
        standby.wait_for("Sending due task atlas-reaper", timeout=10)
        # and sessions keep being reaped under the new beat
        s = orchestrator.spawn(provider="runpod", gpu="h100", image="acme/x:1", idle_ttl_ms=500)
        s.wait(timeout=30)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and orchestrator.info(s.id).status != "terminated":
            time.sleep(0.1)
        assert orchestrator.info(s.id).status == "terminated", cluster.logs()
    finally:
        cluster.beat = standby  # the cluster stops it at the end
