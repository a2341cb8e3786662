"""Helpers of the step-by-step spawn tests: a real redis-server, an in-process fake cloud
and sessions recorded the way ``orchestrator.spawn`` records them (without a broker: the
test itself plays the worker, one service call at a time).

The fake cloud's path patterns are constants: ``/*pods`` matches RunPod's pod collection
under REST v1 (``/pods``) and v2 (``/v2/pods``) alike, and never ``/pods/{id}``.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest

from atlas_tasks import sealing
from atlas_tasks.config import reset_settings
from atlas_tasks.deps import Dependencies
from atlas_tasks.errors import AtlasError
from atlas_tasks.providers.base import Provider
from atlas_tasks.providers.registry import clear_provider_cache
from atlas_tasks.redis_conn import reset_redis_clients
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.service import SessionService
from atlas_tasks.sessions.store import SessionStore
from atlas_tasks.testing.fakecloud import FakeCloud

#: The create request of a pod (RunPod REST v1 ``/pods``, v2 ``/v2/pods``).
CREATE_MATCH = "POST /*pods"
#: The by-name lookup (a filtered list of the same collection).
LOOKUP_MATCH = "GET /*pods"
PREFIX = "atlas-"


def cloud_env(
    monkeypatch: pytest.MonkeyPatch, cloud: FakeCloud, redis_url: str, **settings: str
) -> None:
    """Point this process's settings at ``cloud`` and ``redis_url``."""
    for key, value in cloud.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ATLAS_REDIS_URL", redis_url)
    monkeypatch.setenv("ATLAS_SECRET_KEY", sealing.generate_key())
    monkeypatch.setenv("ATLAS_HTTP_MAX_BACKOFF_S", "0.05")
    for key, value in settings.items():
        monkeypatch.setenv(f"ATLAS_{key.upper()}", value)
    reset_settings()
    reset_redis_clients()
    clear_provider_cache()


@pytest.fixture(scope="module")
def cloud() -> Iterator[FakeCloud]:
    """One fake cloud per module (reset per test by :func:`fresh_cloud`)."""
    with FakeCloud() as fake:
        yield fake


def service(provider: Provider | None = None) -> SessionService:
    """The session service on this process's settings; with ``provider``, every provider
    the service builds is that one (a stub standing in for the cloud)."""
    deps = Dependencies.default()
    if provider is not None:
        deps = replace(deps, providers=lambda name, **_: provider)
    return SessionService(deps)


def new_session(
    reg: SessionStore, *, provider: str = "runpod", api_key: str | None = None
) -> tuple[str, str]:
    """Record a ``spawning`` session with its intent, as ``orchestrator.spawn`` does.

    Returns ``(session id, sealed spawn payload)``.
    """
    sid = secrets.token_hex(8)
    request = {
        "gpu": "h100",
        "image": "ghcr.io/acme/infer:latest",
        "name": f"{PREFIX}{sid}",
        "idle_ttl_ms": 60_000,
        "auth": "none",
        "ports": [{"port": 8000, "protocol": "http"}],
    }
    sealed = sealing.seal({"request": request, "secret": None})
    reg.create(
        SessionRecord(
            id=sid,
            provider=provider,
            status=SessionStatus.SPAWNING,
            pod_name=f"{PREFIX}{sid}",
            user_id=None,
            idle_ttl_ms=60000,
            auth="none",
            base_url="",
            spawn_sealed=sealed,
            api_key_sealed=sealing.seal({"api_key": api_key}) if api_key else None,
        )
    )
    return sid, sealed


def run_spawn_task(sid: str, sealed: str, attempt_id: str) -> dict[str, Any]:
    """One delivery of ``atlas.compute.spawn`` that gives up on its first error (what the
    task does once its retries are spent): ``spawn``, else ``spawn_failed``."""
    svc = service()
    try:
        return svc.spawn(sid, sealed, attempt_id=attempt_id)
    except AtlasError as exc:
        return svc.spawn_failed(sid, exc)


def wait_for(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until it holds (fails the test after ``timeout`` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def creates_of(cloud: FakeCloud, sid: str) -> int:
    """Pods ever created at the fake cloud under the session's name."""
    return cloud.creates_by_name().get(f"{PREFIX}{sid}", 0)


def collection_calls(cloud: FakeCloud, method: str) -> int:
    """Requests received on the pod collection (``POST`` creates, ``GET`` lookups)."""
    return sum(
        n
        for route, n in cloud.state()["routes"].items()
        if route.startswith(f"{method} ") and route.endswith("/pods")
    )


def live_pods_of(cloud: FakeCloud, sid: str) -> list[dict[str, Any]]:
    """Pods under the session's name that are not terminated."""
    return [p for p in cloud.live_pods() if p["name"] == f"{PREFIX}{sid}"]
