"""A stop racing a spawn, interleaved deterministically on a real redis-server.

The terminate that begins before the pod exists looks it up by name and then settles,
atomically with the spawn's ``finish_spawn``, who terminates the pod. Each test makes the
spawn record its pod at one exact point of that terminate and checks that the pod is
terminated exactly once and the session ends ``terminated``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import pytest
import redis

from atlas_tasks import constants as C
from atlas_tasks import sealing
from atlas_tasks.config import reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.providers.base import Provider
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.service import SessionService
from atlas_tasks.sessions.store import SessionStore
from atlas_tasks.specs import Compute

pytestmark = pytest.mark.integration


class RacingProvider:
    """Just what ``SessionService.terminate`` calls; ``on_lookup`` runs inside the name lookup."""

    def __init__(self) -> None:
        self.terminated: list[str] = []
        self.on_lookup: Callable[[], None] = lambda: None

    def find_compute_by_name(self, name: str) -> Compute | None:
        self.on_lookup()  # the pod is created right after the provider answered "none"
        return None

    def terminate(self, compute_id: str) -> None:
        self.terminated.append(compute_id)


@pytest.fixture
def reg(redis_client: redis.Redis) -> SessionStore:
    return SessionStore(redis_client)


def _service(reg: SessionStore, stub: RacingProvider) -> SessionService:
    """The service on the test's Redis, with ``stub`` as every provider."""
    deps = Dependencies.from_client(reg.r, providers=lambda name, **_: cast(Provider, stub))
    return SessionService(deps, store=reg)


@pytest.fixture
def provider() -> RacingProvider:
    return RacingProvider()


@pytest.fixture
def svc(reg: SessionStore, provider: RacingProvider) -> SessionService:
    return _service(reg, provider)


def _spawning(reg: SessionStore, sid: str) -> None:
    reg.create(
        SessionRecord(
            id=sid,
            provider="mock",
            status=SessionStatus.SPAWNING,
            pod_name=f"atlas-{sid}",
            idle_ttl_ms=60000,
        )
    )


def _spawn_records_pod(svc: SessionService, sid: str, pod: str) -> dict[str, Any]:
    """What the spawn does once its create returned: record, then end a stop."""
    verdict = svc.store.finish_spawn(sid, pod, {"id": pod, "ports": []})
    outcome = None
    if verdict == "terminating":
        outcome = svc.terminate(sid, reason="requested", fence_token=f"spawn-{sid}")
    return {"verdict": verdict, "outcome": outcome}


def test_pod_recorded_after_the_name_lookup_is_terminated_by_the_fence_holder(
    reg: SessionStore, provider: RacingProvider, svc: SessionService
) -> None:
    _spawning(reg, "r1")
    spawn: dict[str, Any] = {}
    provider.on_lookup = lambda: spawn.update(_spawn_records_pod(svc, "r1", "pod-r1"))

    outcome = svc.terminate("r1", reason="requested", fence_token="stop-r1")

    # The spawn's own terminate was fenced out, so the stop must end the pod itself.
    assert spawn == {"verdict": "terminating", "outcome": "fenced"}
    assert outcome == "terminated"
    assert provider.terminated == ["pod-r1"]
    assert reg.info("r1").status == "terminated"
    assert "r1" not in reg.list_ids()


def test_pod_recorded_after_the_stop_deferred_is_terminated_by_the_spawn(
    reg: SessionStore, provider: RacingProvider, svc: SessionService
) -> None:
    _spawning(reg, "r2")

    outcome = svc.terminate("r2", reason="requested", fence_token="stop-r2")
    assert outcome == "deferred"
    assert provider.terminated == []
    assert reg.info("r2").status == "terminating"

    spawn = _spawn_records_pod(svc, "r2", "pod-r2")
    assert spawn == {"verdict": "terminating", "outcome": "terminated"}
    assert provider.terminated == ["pod-r2"]
    assert reg.info("r2").status == "terminated"


def test_stop_of_a_spawn_that_never_made_a_pod_finishes(
    reg: SessionStore, svc: SessionService, provider: RacingProvider, redis_client: redis.Redis
) -> None:
    _spawning(reg, "r3")
    redis_client.zrem(C.INTENTS_KEY, "r3")  # its spawn gave up: nothing will record a pod

    assert svc.terminate("r3", reason="requested", fence_token="stop-r3") == "terminated"
    assert provider.terminated == []
    assert reg.info("r3").status == "terminated"


class SlowCreateProvider(RacingProvider):
    """A provider whose create is slow enough for a stop to end the session meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.during_create: Callable[[], None] = lambda: None

    def spawn_compute(self, request: Any, secret: str | None = None) -> Compute:
        self.during_create()
        return Compute(id="pod-late", provider="mock", status="running")


@pytest.fixture
def secret_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ATLAS_SECRET_KEY", sealing.generate_key())
    reset_settings()
    yield
    reset_settings()  # before monkeypatch drops the key: no cached settings outlive it


def test_pod_of_a_create_that_outlived_its_session_is_terminated(
    reg: SessionStore, secret_key: None
) -> None:
    stub = SlowCreateProvider()
    svc = _service(reg, stub)
    _spawning(reg, "r4")
    request = {"gpu": "h100", "image": "img"}
    sealed = sealing.seal({"request": request, "secret": None})

    def stop_ends_the_session() -> None:  # e.g. a re-sent spawn saw the stop and ended it
        reg.begin_terminate("r4", "requested", "other", 1_000)
        reg.finish_terminate("r4", "requested")

    stub.during_create = stop_ends_the_session
    result = svc.spawn("r4", sealed, attempt_id="t1")

    assert stub.terminated == ["pod-late"]
    assert result["status"] == "terminated"
    assert reg.info("r4").status == "terminated"
