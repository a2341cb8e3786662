"""The ``wired`` fixture: the session core on the test Redis (real redis-server, so the
store's Lua runs for real), a scripted mock cloud as every provider, recorders instead of
Celery. No worker, no beat."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from atlas_tasks import sealing
from atlas_tasks.config import AtlasSettings, reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.sessions.reaper import SessionReaper
from atlas_tasks.sessions.service import SessionService
from tests.unit.sessions.sessions_support import PREFIX, Published, ScriptedCloud, Wired


@pytest.fixture
def wired(redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Wired]:
    """The service and reaper through :class:`Dependencies` on the test Redis; lookups are
    not polled (``create_lookup_wait_ms=0``) and sleeps are recorded, not slept."""
    monkeypatch.setenv("ATLAS_SECRET_KEY", sealing.generate_key())
    reset_settings()
    MockProvider.reset()
    settings = AtlasSettings(
        create_lookup_wait_ms=0,
        reap_name_prefix=PREFIX,
        reap_providers=["mock"],
        orphan_grace_ms=0,
        spawn_stall_ms=4_000,
    )
    cloud = ScriptedCloud()
    published = Published()
    sleeps: list[float] = []
    deps = Dependencies.from_client(
        redis_client,
        settings=settings,
        providers=lambda name, **_: cloud,
        publish=published,
        sleep=sleeps.append,
    )
    service = SessionService(deps)
    yield Wired(
        redis_client, service.store, service, SessionReaper(deps, service), cloud, published, sleeps
    )
    MockProvider.reset()
    reset_settings()
