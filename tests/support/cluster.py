"""A real 3-master Redis Cluster for tests: the session-scoped ``redis_cluster`` fixture.

Use it from a test module by importing the fixture into the module's namespace (pytest
finds fixtures there)::

    from tests.support.cluster import redis_cluster  # noqa: F401

    def test_something(redis_cluster: RedisClusterServer) -> None:
        client_for_url(redis_cluster.url)

One cluster serves the whole session (forming one takes about 4 s); tests keep apart
by their own key names, or call :func:`flush_cluster` first. Without ``redis-server``
or ``redis-cli`` the tests are skipped locally (with the reason) and fail in CI, where
``.ci/run`` installs them.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from atlas_tasks.testing.localstack import RedisClusterServer
from tests.support.harness import in_ci


def cluster_binaries_missing() -> str | None:
    """The first of ``redis-server`` / ``redis-cli`` not on PATH, or None."""
    for exe in ("redis-server", "redis-cli"):
        if shutil.which(exe) is None:
            return exe
    return None


def flush_cluster(cluster: RedisClusterServer) -> None:
    """``FLUSHALL`` on every node (a cluster client's FLUSHALL would too, but this needs
    no routing and leaves no client behind)."""
    for port in cluster.ports:
        client = cluster.node_client(port)
        try:
            client.flushall()
        finally:
            client.close()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServer]:
    """A 3-master Redis Cluster (no replicas) on loopback for the whole session."""
    missing = cluster_binaries_missing()
    if missing is not None:
        reason = f"{missing} is not installed (Debian: apt-get install redis-server)"
        if in_ci():
            pytest.fail(f"{reason}; CI must run the Redis Cluster tests (.ci/run)")
        pytest.skip(reason)
    with RedisClusterServer(masters=3) as cluster:
        yield cluster
