"""Integration fixtures: a real local cluster (redis-server, fake cloud, worker, beat)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from atlas_tasks.config import reset_settings
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import reset_redis_clients
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.harness import in_ci, redis_available

#: Settings of the shared test cluster: defaults except fast orphan scans and a short
#: visibility timeout so a killed worker's task is redelivered within seconds.
CLUSTER_SETTINGS: dict[str, Any] = {
    "orphan_grace_ms": 1500,
    "orphan_scan_interval_ms": 1000,
    "visibility_timeout_s": 6,
    "http_max_backoff_s": 1,
}


@pytest.fixture(scope="module")
def _cluster() -> Iterator[LocalCluster]:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(fakecloud={"boot_delay_s": 0.0}, **CLUSTER_SETTINGS) as cluster:
        yield cluster


@pytest.fixture
def cluster(_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    """The module's cluster, with this process's settings pointed at it."""
    for key, value in _cluster.env.items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    reset_redis_clients()
    clear_provider_cache()
    yield _cluster
    if any(not w.alive() for w in _cluster.workers):
        print(_cluster.logs())
