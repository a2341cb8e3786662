"""Shared fixtures: a real redis-server per session, flushed per test; settings reset."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis

from atlas_tasks.config import reset_settings
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.testing.fakecloud import FakeCloud
from atlas_tasks.testing.localstack import RedisServer
from tests.support.harness import in_ci, redis_available


@pytest.fixture(autouse=True)
def _clean_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts from default settings and an empty provider cache."""
    for name in list(os.environ):
        if name.startswith("ATLAS_") or name in (
            "RUNPOD_API_KEY",
            "FLY_API_TOKEN",
            "LAMBDA_LABS_API_KEY",
            "VAST_API_KEY",
        ):
            monkeypatch.delenv(name, raising=False)
    reset_settings()
    clear_provider_cache()
    yield
    reset_settings()
    clear_provider_cache()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port for the whole session (error in CI if missing)."""
    if not redis_available():
        if in_ci():
            pytest.fail("redis-server is required in CI (.ci/run installs it)")
        pytest.skip("redis-server not installed")
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """URL of the session redis-server, flushed before each test."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A decoded-responses client on the flushed test Redis."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture(scope="module")
def shared_cloud() -> Iterator[FakeCloud]:
    """One fake cloud HTTP server per test module (a module may define its own ``cloud``)."""
    with FakeCloud() as cloud:
        yield cloud


@pytest.fixture
def cloud(shared_cloud: FakeCloud) -> Iterator[FakeCloud]:
    """The module's fake cloud, reset before and after each test."""
    shared_cloud.reset()
    yield shared_cloud
    shared_cloud.reset()
