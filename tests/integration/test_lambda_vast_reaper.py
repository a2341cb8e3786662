"""The reaper on Lambda Labs and Vast.ai: a real cluster (redis-server, worker, beat) whose
reaper lists both providers in the fake cloud. Orphans named with the ``atlas-`` prefix
are terminated; foreign instances and tracked sessions are left alone."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from atlas_tasks import orchestrator
from atlas_tasks.config import reset_settings
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import reset_redis_clients
from atlas_tasks.testing.fakecloud.lambda_labs import DEFAULT_SSH_KEY
from atlas_tasks.testing.localstack import LocalCluster
from tests.support.harness import in_ci, redis_available

pytestmark = pytest.mark.integration

IMAGE = "ghcr.io/acme/infer:latest"
#: Long enough that an un-aged Vast orphan is not reaped during the first scans, so the
#: aged one going first shows the reaper reads Vast's ``start_date``.
GRACE_MS = 4000


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI")
        pytest.skip("redis-server not installed")
    with LocalCluster(
        fakecloud={"boot_delay_s": 0.0},
        reap_providers="lambda_labs,vast",
        orphan_grace_ms=GRACE_MS,
        orphan_scan_interval_ms=500,
        http_max_backoff_s=1,
    ) as c:
        yield c


@pytest.fixture(autouse=True)
def _env(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for key, value in cluster.env.items():
        if key.startswith("ATLAS_"):
            monkeypatch.setenv(key, value)
    reset_settings()
    reset_redis_clients()
    clear_provider_cache()
    yield


def _lambda_launch(cluster: LocalCluster, name: str) -> str:
    cloud = cluster.cloud
    answer = httpx.post(
        f"{cloud.lambda_labs_url}/instance-operations/launch",
        headers={"Authorization": f"Bearer {cloud.api_key}"},
        json={
            "region_name": "us-east-1",
            "instance_type_name": "gpu_1x_a10",
            "ssh_key_names": [DEFAULT_SSH_KEY],
            "name": name,
        },
    )
    answer.raise_for_status()
    return str(answer.json()["data"]["instance_ids"][0])


def _vast_create(cluster: LocalCluster, label: str) -> int:
    cloud = cluster.cloud
    headers = {"Authorization": f"Bearer {cloud.api_key}"}
    offers = httpx.post(
        f"{cloud.vast_url}/bundles/",
        headers=headers,
        json={
            "gpu_name": {"eq": "RTX 3090"},
            "verified": {"eq": True},
            "order": [["dph_total", "asc"]],
        },
    ).json()["offers"]
    answer = httpx.put(
        f"{cloud.vast_url}/asks/{offers[0]['id']}/",
        headers=headers,
        json={
            "client_id": "me",
            "image": IMAGE,
            "env": {},
            "disk": 10,
            "label": label,
            "runtype": "args",
            "price": None,
        },
    )
    answer.raise_for_status()
    return int(answer.json()["new_contract"])


def _lambda_ids(cluster: LocalCluster) -> set[str]:
    return {i["id"] for i in cluster.cloud.state()["lambda_labs"]["instances"]}


def _vast_ids(cluster: LocalCluster) -> set[int]:
    return {i["id"] for i in cluster.cloud.state()["vast"]["instances"]}


def _wait(
    predicate: Callable[[], bool],
    timeout: float,
    what: str,
    cluster: LocalCluster,
    every: Callable[[], Any] | None = None,
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if every is not None:
            every()
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\n{cluster.logs()}")


def test_orphans_on_lambda_and_vast_are_reaped(cluster: LocalCluster) -> None:
    # Sessions the orchestrator tracks (and keeps touched) on both providers.
    sessions = [
        orchestrator.spawn(provider="lambda_labs", gpu="a10", image=IMAGE, idle_ttl_ms=60_000),
        orchestrator.spawn(provider="vast", gpu="rtx_4090", image=IMAGE, idle_ttl_ms=60_000),
    ]
    computes = [s.wait(timeout=30) for s in sessions]

    # Behind the orchestrator's back: prefixed orphans and foreign instances.
    lambda_orphan = _lambda_launch(cluster, "atlas-orphanlam1")
    lambda_foreign = _lambda_launch(cluster, "someone-elses-vm")
    vast_aged = _vast_create(cluster, "atlas-orphanvast1")
    vast_young = _vast_create(cluster, "atlas-orphanvast2")
    vast_foreign = _vast_create(cluster, "not-ours")
    # Vast reports start_date: age one orphan past the grace. Lambda has no creation
    # time, so the reaper ages its orphans from when it first saw them.
    httpx.post(
        f"{cluster.cloud.url}/_admin/vast/instances/{vast_aged}/age", json={"seconds": 3600}
    ).raise_for_status()
    started = time.monotonic()

    def touch() -> None:
        for s in sessions:
            orchestrator.touch(s.id)

    _wait(
        lambda: vast_aged not in _vast_ids(cluster), 15, "aged vast orphan reaped", cluster, touch
    )
    aged_reaped_after = time.monotonic() - started
    assert aged_reaped_after < GRACE_MS / 1000, "the aged orphan should go on the first scans"
    assert vast_young in _vast_ids(cluster), "an orphan younger than the grace must wait"

    _wait(
        lambda: lambda_orphan not in _lambda_ids(cluster) and vast_young not in _vast_ids(cluster),
        20,
        "lambda and young vast orphans reaped",
        cluster,
        touch,
    )
    assert time.monotonic() - started >= GRACE_MS / 1000 - 0.5

    # Foreign instances and the tracked sessions are untouched.
    assert lambda_foreign in _lambda_ids(cluster)
    assert vast_foreign in _vast_ids(cluster)
    assert computes[0].id in _lambda_ids(cluster)
    assert int(computes[1].id) in _vast_ids(cluster)
    for s in sessions:
        assert orchestrator.info(s.id).status == "running"

    terminated = {i["id"]: i for i in cluster.cloud.state()["lambda_labs"]["terminated_instances"]}
    assert terminated[lambda_orphan]["name"] == "atlas-orphanlam1"
    destroyed = {i["id"] for i in cluster.cloud.state()["vast"]["destroyed_instances"]}
    assert {vast_aged, vast_young} <= destroyed

    for s in sessions:
        orchestrator.stop_tracked(s.id)
    _wait(
        lambda: all(orchestrator.info(s.id).status == "terminated" for s in sessions),
        20,
        "sessions stopped",
        cluster,
    )
    assert computes[0].id not in _lambda_ids(cluster)
    assert int(computes[1].id) not in _vast_ids(cluster)
