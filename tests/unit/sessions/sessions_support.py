"""Helpers of the process-free session tests: a scripted mock cloud, recorders, and what
the ``wired`` fixture (conftest.py) hands a test."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

import redis

from atlas_tasks import sealing
from atlas_tasks.errors import AtlasError
from atlas_tasks.providers.mock import MockProvider
from atlas_tasks.sessions.reaper import SessionReaper
from atlas_tasks.sessions.records import SessionRecord, SessionStatus
from atlas_tasks.sessions.service import SessionService
from atlas_tasks.sessions.store import SessionStore
from atlas_tasks.specs import Compute, ComputeRequest

PREFIX = "atlas-"


class ScriptedCloud(MockProvider):
    """The mock cloud (in memory) with failures switched on per test.

    ``fail_after_create``: the next create makes the pod, then answers 503 (the answer
    was lost: a pod exists by name). ``refuse_create``: the next creates raise it and
    make nothing. Creates and terminates are recorded in lists: the spawn works on a
    shallow copy of its provider, so only mutable state is shared with the test.
    """

    def __init__(self) -> None:
        super().__init__()
        self.created: list[str] = []
        self.terminates: list[str] = []
        self.faults: dict[str, Any] = {"fail_after_create": False, "refuse_create": None}

    @property
    def fail_after_create(self) -> bool:
        """Make the next create's pod, then answer 503 (shared with copies)."""
        return bool(self.faults["fail_after_create"])

    @fail_after_create.setter
    def fail_after_create(self, value: bool) -> None:
        self.faults["fail_after_create"] = value

    @property
    def refuse_create(self) -> AtlasError | None:
        """Raise this from every create, making nothing (shared with copies)."""
        error: AtlasError | None = self.faults["refuse_create"]
        return error

    @refuse_create.setter
    def refuse_create(self, value: AtlasError | None) -> None:
        self.faults["refuse_create"] = value

    @property
    def creates(self) -> int:
        """Create requests that made a pod."""
        return len(self.created)

    def create_compute(self, request: ComputeRequest) -> Compute:
        if self.refuse_create is not None:
            raise self.refuse_create
        self.created.append(request.name or "")
        compute = super().create_compute(request)
        if self.fail_after_create:
            self.fail_after_create = False
            err = AtlasError("upstream 503", kind="provider", status=503, provider="mock")
            err.maybe_created = True  # type: ignore[attr-defined]  # as the HTTP layer marks it
            raise err
        return compute

    def terminate(self, compute_id: str) -> None:
        self.terminates.append(compute_id)
        super().terminate(compute_id)

    def live(self) -> list[Compute]:
        """Pods not terminated."""
        return [c for c in self.list_compute() if c.status != "terminated"]


@dataclass
class Published:
    """What the service published through ``deps.publish`` (events written by the
    store's Lua go to Redis directly: read them with ``events.history``)."""

    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def __call__(
        self,
        topic_id: str,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        topic: str = "compute",
    ) -> str | None:
        self.events.append((topic_id, type, dict(data or {})))
        return None

    def types(self, topic_id: str) -> list[str]:
        """Event types published on one topic id, in order."""
        return [t for tid, t, _ in self.events if tid == topic_id]


@dataclass
class Wired:
    """One test's service, reaper, store, cloud and recorders."""

    redis: redis.Redis
    store: SessionStore
    service: SessionService
    reaper: SessionReaper
    cloud: ScriptedCloud
    published: Published
    sleeps: list[float]


def new_session(store: SessionStore, *, idle_ttl_ms: int = 60_000) -> tuple[str, str]:
    """Record a ``spawning`` session as ``client.spawn`` does; ``(id, sealed payload)``."""
    sid = secrets.token_hex(8)
    request = {
        "gpu": "h100",
        "image": "me/infer:1",
        "name": f"{PREFIX}{sid}",
        "idle_ttl_ms": idle_ttl_ms,
        "auth": "none",
    }
    sealed = sealing.seal({"request": request, "secret": None})
    store.create(
        SessionRecord(
            id=sid,
            provider="mock",
            status=SessionStatus.SPAWNING,
            pod_name=f"{PREFIX}{sid}",
            user_id=None,
            idle_ttl_ms=idle_ttl_ms,
            auth="none",
            base_url="",
            spawn_sealed=sealed,
        )
    )
    return sid, sealed


def running_session(w: Wired, *, idle_ttl_ms: int = 60_000) -> tuple[str, str]:
    """A session spawned through the service: ``(session id, pod id)``."""
    sid, sealed = new_session(w.store, idle_ttl_ms=idle_ttl_ms)
    compute = w.service.spawn(sid, sealed, attempt_id="t-spawn")
    return sid, str(compute["id"])


def record(store: SessionStore, sid: str) -> SessionRecord:
    """The session's record (fails the test when missing)."""
    found = store.get(sid)
    assert found is not None, f"no record for {sid}"
    return found
