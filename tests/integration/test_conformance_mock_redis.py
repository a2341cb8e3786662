"""The shipped conformance suite against the mock provider keeping its state in a real Redis."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import redis

import atlas_tasks as atlas
from atlas_tasks import constants
from atlas_tasks.config import reset_settings
from atlas_tasks.providers.base import Provider
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.testing.conformance import ProviderConformance

pytestmark = pytest.mark.integration


class TestMockRedisConformance(ProviderConformance):
    @pytest.fixture
    def provider(self, redis_url: str) -> Iterator[Provider]:
        provider = atlas.get_provider("mock", redis_url=redis_url)
        assert isinstance(provider, MockProvider) and provider.state == "redis"
        yield provider
        MockProvider.reset(redis_url)


def test_state_is_shared_through_redis_not_memory(
    redis_url: str, redis_client: redis.Redis
) -> None:
    MockProvider.reset()
    writer = atlas.get_provider("mock", redis_url=redis_url)
    compute = atlas.spawn_compute(
        provider=writer, name="shared", auth="bearer", ports=[(8000, "http")]
    )
    # Nothing in process memory: a memory-state mock does not know it...
    with pytest.raises(atlas.NotFoundError):
        atlas.get_compute(compute.id, provider="mock")
    # ...but another Redis-backed instance (another process in real life) does.
    reader = atlas.get_provider("mock", redis_url=redis_url)
    assert reader is not writer
    assert atlas.get_compute(compute.id, provider=reader).name == "shared"
    atlas.stop(compute.id, provider=reader)
    assert atlas.get_compute(compute.id, provider=writer).status == "stopped"

    stored = redis_client.hget(constants.MOCK_COMPUTE_KEY, compute.id)
    assert stored is not None and json.loads(stored)["status"] == "stopped"
    # The raw token is in no Redis key.
    assert compute.auth is not None and compute.auth.token
    for key in redis_client.scan_iter("*"):
        dump = json.dumps(redis_client.hgetall(key)) if redis_client.type(key) == "hash" else ""
        assert compute.auth.token not in dump


def test_settings_select_redis_state(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_MOCK_STATE", "redis")
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    reset_settings()
    provider = atlas.get_provider("mock")
    assert isinstance(provider, MockProvider) and provider.state == "redis"
    job = atlas.run_job(provider="mock", endpoint="ep", input=5, mode="sync")
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        assert client.hexists(constants.MOCK_JOBS_KEY, job.id)
    finally:
        client.close()
    assert list(atlas.stream_job(job.id, endpoint="ep", provider="mock")) == [{"echo": 5}]


def test_concurrent_updates_do_not_lose_writes(redis_url: str) -> None:
    import threading

    provider = atlas.get_provider("mock", redis_url=redis_url)
    computes = [atlas.spawn_compute(provider=provider) for _ in range(20)]

    def stop_all(offset: int) -> None:
        other = atlas.get_provider("mock", redis_url=redis_url)
        for c in computes[offset::2]:
            other.stop(c.id)

    threads = [threading.Thread(target=stop_all, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert {c.id for c in provider.list_compute(status="stopped")} == {c.id for c in computes}
