"""Issue 12, finding 2: at most one pod per session, on every path.

Each test steps one interleaving exactly, on a real redis-server, and counts the creates
the cloud received under the session's name:

* 2a: the create answers 500 after creating, a stop runs while the spawn is between that
  answer and its retry (the stop deletes the pod by name), and the spawn must not create
  again;
* 2b: a spawn is redelivered in every status a session can have;
* 2c: a create that completes after the client's read timeout is adopted, not duplicated,
  both by the spawn's own retry and by a redelivery after its worker died mid-create.

2a and 2c run the real RunPod provider (its own create loop) against the fake cloud over
HTTP, holding or delaying the provider's answer at the exact step; 2b uses a stub provider.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from atlas_tasks import events
from atlas_tasks.config import get_settings, reset_settings
from atlas_tasks.errors import AtlasError
from atlas_tasks.providers import Provider, get_provider
from atlas_tasks.sessions.records import SessionRecord
from atlas_tasks.sessions.service import SessionService
from atlas_tasks.sessions.store import SessionStore
from atlas_tasks.specs import Compute, ComputeRequest, ComputeStatus
from atlas_tasks.testing.fakecloud import FakeCloud
from tests.integration.spawn_support import (
    CREATE_MATCH,
    LOOKUP_MATCH,
    cloud,  # noqa: F401 - fixture
    cloud_env,
    collection_calls,
    creates_of,
    live_pods_of,
    new_session,
    service,
    wait_for,
)

pytestmark = pytest.mark.integration


class Background:
    """Run a call in a thread; ``result()`` re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.value: Any = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.value = fn()
            except BaseException as exc:  # handed to the test thread
                self.error = exc

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def result(self, timeout: float = 20.0) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the background call did not finish"
        if self.error is not None:
            raise self.error
        return self.value


# --------------------------------------------------------------------------- 2a


@pytest.fixture
def http_reg(
    cloud: FakeCloud,
    redis_url: str,
    redis_client: redis.Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SessionStore]:
    cloud.reset()
    cloud_env(monkeypatch, cloud, redis_url, create_lookup_wait_ms="300")
    yield SessionStore(redis_client)
    cloud.release("create-answer")  # never leave a held call behind
    cloud.release("retry-lookup")
    cloud.release(LATE)


@pytest.mark.parametrize("gate", ["create-answer", "retry-lookup"])
def test_stop_during_the_spawns_retry_never_leads_to_a_second_create(
    http_reg: SessionStore, cloud: FakeCloud, gate: str
) -> None:  # noqa: F811
    """The create makes the pod and answers 500. The stop arrives while the spawn waits
    for that answer ("create-answer") or for its retry lookup ("retry-lookup"), finds
    the pod by name and deletes it. The spawn must then end the session, not create."""
    reg = http_reg
    hold: dict[str, Any] = (
        {"hold": gate, "hold_after_handler": True} if gate == "create-answer" else {}
    )
    cloud.fail_next(CREATE_MATCH, 500, after_create=True, **hold)
    if gate == "retry-lookup":
        cloud.fail_next(LOOKUP_MATCH, None, hold=gate)
    sid, sealed = new_session(reg)

    spawn = Background(lambda: _svc().spawn(sid, sealed, attempt_id="t1"))
    cloud.wait_held(gate)
    assert len(live_pods_of(cloud, sid)) == 1  # the pod the 500 will hide

    stop = _svc().terminate(sid, reason="requested", fence_token="stop-1")
    assert stop == "deferred"  # no pod recorded yet: the spawn ends the session
    assert live_pods_of(cloud, sid) == []  # the stop deleted the pod by name
    cloud.release(gate)
    result = spawn.result()

    assert creates_of(cloud, sid) == 1, cloud.creates_by_name()
    assert live_pods_of(cloud, sid) == []
    assert result["status"] == "terminated"
    info = reg.info(sid)
    assert info.status == "terminated" and info.reason == "requested"
    assert sid not in reg.list_ids() and sid not in reg.intent_ids()


# --------------------------------------------------------------------------- 2c


@pytest.fixture
def slow_reg(
    cloud: FakeCloud,
    redis_url: str,
    redis_client: redis.Redis,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[SessionStore]:
    cloud.reset()
    # the client gives up on a create after 0.5 s; the lookup polls for 4 s
    cloud_env(monkeypatch, cloud, redis_url, create_lookup_wait_ms="4000", http_timeout_s="0.5")
    yield SessionStore(redis_client)
    cloud.release(LATE)


#: Gate holding the create before the cloud makes the pod: the client times out, looks
#: up, finds nothing; the test then lets the create land.
LATE = "late-create"


def _let_the_late_create_land(cloud: FakeCloud, sid: str, lookups_before: int) -> None:  # noqa: F811
    """Once the spawn looked the name up (and found nothing), release the held create and
    wait until every create request the cloud received has made its pod."""
    wait_for(
        lambda: collection_calls(cloud, "GET") > lookups_before,
        what="a by-name lookup after the timeout",
    )
    cloud.release(LATE)
    wait_for(lambda: creates_of(cloud, sid) >= 1, what="the late create to land")


def test_create_landing_after_the_client_timeout_is_adopted(
    slow_reg: SessionStore, cloud: FakeCloud
) -> None:  # noqa: F811
    reg = slow_reg
    cloud.fail_next(CREATE_MATCH, None, hold=LATE)
    sid, sealed = new_session(reg)

    spawn = Background(lambda: _svc().spawn(sid, sealed, attempt_id="t1"))
    cloud.wait_held(LATE)
    _let_the_late_create_land(cloud, sid, 0)
    result = spawn.result()
    # every create request the cloud got has landed by now: count them all
    wait_for(
        lambda: creates_of(cloud, sid) == collection_calls(cloud, "POST"),
        what="all create requests to finish",
    )

    assert creates_of(cloud, sid) == 1, cloud.creates_by_name()
    pods = live_pods_of(cloud, sid)
    assert len(pods) == 1
    assert result["id"] == pods[0]["id"]
    assert reg.info(sid).status == "running"
    assert reg.info(sid).compute_id == pods[0]["id"]


def test_create_answered_after_the_client_timeout_is_adopted(
    slow_reg: SessionStore, cloud: FakeCloud
) -> None:  # noqa: F811
    """The pod exists at once, only its answer is late (``latency_after_s``)."""
    reg = slow_reg
    cloud.fail_next(CREATE_MATCH, None, latency_after_s=1.0)
    sid, sealed = new_session(reg)

    result = _svc().spawn(sid, sealed, attempt_id="t1")

    assert creates_of(cloud, sid) == 1
    assert result["id"] == live_pods_of(cloud, sid)[0]["id"]
    assert reg.info(sid).status == "running"


def test_redelivery_after_a_worker_died_mid_create_adopts_the_late_pod(
    slow_reg: SessionStore,
    cloud: FakeCloud,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The first delivery passed the registry's create gate and sent the create, then its
    worker died; the create lands late. The redelivery must wait for it and adopt it."""
    reg = slow_reg
    cloud.fail_next(CREATE_MATCH, None, hold=LATE)
    sid, sealed = new_session(reg)
    # what the first delivery did before it died: lease, gate, request sent
    assert reg.start_spawn(sid, "t1", 60_000) == 1
    # (the old registry has no gate; a pod may exist by name from here on either way)
    if hasattr(reg, "begin_create"):
        assert reg.begin_create(sid, "t1") == "ok"
    request = ComputeRequest(gpu="h100", image="img", name=f"atlas-{sid}")
    # one create request and no re-create of its own: the worker dies in its timeout
    monkeypatch.setenv("ATLAS_HTTP_MAX_RETRIES", "0")
    reset_settings()
    provider = get_provider("runpod", api_key=cloud.api_key)
    dying = Background(lambda: provider.create_compute(request))
    cloud.wait_held(LATE)
    with pytest.raises(AtlasError):
        dying.result()  # its client times out, as the dead worker's would have
    reg.release_spawn_lease(sid)  # and the dead worker's lease runs out
    lookups = collection_calls(cloud, "GET")

    redelivered = Background(lambda: _svc().spawn(sid, sealed, attempt_id="t1"))
    _let_the_late_create_land(cloud, sid, lookups)
    result = redelivered.result()
    wait_for(
        lambda: creates_of(cloud, sid) == collection_calls(cloud, "POST"),
        what="all create requests to finish",
    )

    assert creates_of(cloud, sid) == 1, cloud.creates_by_name()
    assert result["id"] == live_pods_of(cloud, sid)[0]["id"]
    assert reg.info(sid).status == "running"


# --------------------------------------------------------------------------- 2b


class WorkerDied(BaseException):
    """Stands for the worker process dying at this point (not an Exception: nothing in
    the spawn handles it, like a SIGKILL)."""


class StubCloud(Provider):
    """An in-memory cloud counting creates per name; failures are switched on by flags."""

    name = "mock"

    def __init__(self) -> None:
        super().__init__()
        self.pods: dict[str, Compute] = {}
        self.creates: dict[str, int] = {}
        self.calls: list[str] = []
        self.die_after_create = False
        self.refuse_create: AtlasError | None = None

    def create_compute(self, request: ComputeRequest) -> Compute:
        self.calls.append("create")
        if self.refuse_create is not None:
            raise self.refuse_create
        name = request.name or ""
        self.creates[name] = self.creates.get(name, 0) + 1
        pod = Compute(
            id=f"pod-{len(self.pods) + 1}", provider="mock", name=name, status=ComputeStatus.RUNNING
        )
        self.pods[pod.id] = pod
        if self.die_after_create:
            self.die_after_create = False
            raise WorkerDied
        return pod

    def get_compute(self, compute_id: str) -> Compute:
        return self.pods[compute_id]

    def list_compute(
        self,
        *,
        status: str | ComputeStatus | None = None,
        name: str | None = None,
        region: str | None = None,
        gpu: str | None = None,
    ) -> list[Compute]:
        self.calls.append("list")
        return [p for p in self.pods.values() if name in (None, p.name)]

    def terminate(self, compute_id: str) -> None:
        self.calls.append("terminate")
        pod = self.pods[compute_id]
        self.pods[compute_id] = pod.model_copy(update={"status": ComputeStatus.TERMINATED})

    def live(self) -> list[Compute]:
        return [p for p in self.pods.values() if p.status != ComputeStatus.TERMINATED]


@pytest.fixture
def stub(
    redis_url: str,
    redis_client: redis.Redis,
    cloud: FakeCloud,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[tuple[SessionStore, StubCloud]]:
    # spawn lease TTL 1.5 s (3/4 of the stall time): a dead holder's lease frees quickly
    cloud_env(monkeypatch, cloud, redis_url, create_lookup_wait_ms="200", spawn_stall_ms="2000")
    provider = StubCloud()
    _STUBS.append(provider)
    try:
        yield SessionStore(redis_client), provider
    finally:
        _STUBS.remove(provider)


#: The stub cloud of the running test (the ``stub`` fixture), which every provider the
#: service builds then is; empty: the fake cloud behind the real providers.
_STUBS: list[StubCloud] = []


def _svc() -> SessionService:
    return service(_STUBS[-1] if _STUBS else None)


def _status_spawning(reg: SessionStore, p: StubCloud, sid: str, sealed: str) -> None:
    p.die_after_create = True  # first delivery: the pod is made, then the worker dies
    with pytest.raises(WorkerDied):
        _svc().spawn(sid, sealed, attempt_id="t1")
    reg.release_spawn_lease(sid)  # the dead worker's lease runs out


def _status_running(reg: SessionStore, p: StubCloud, sid: str, sealed: str) -> None:
    _svc().spawn(sid, sealed, attempt_id="t1")


def _status_terminating_with_pod(reg: SessionStore, p: StubCloud, sid: str, sealed: str) -> None:
    _svc().spawn(sid, sealed, attempt_id="t1")
    # a stop took the fence and deleted the pod, then its worker died before recording it
    verdict, compute_id, _, _ = reg.begin_terminate(sid, "requested", "stop-1", 60_000)
    assert verdict == "ok"
    p.terminate(compute_id)


def _status_terminating_without_pod(reg: SessionStore, p: StubCloud, sid: str, sealed: str) -> None:
    # stopped before the spawn ran: the stop defers the end to the spawn
    assert _svc().terminate(sid, reason="requested", fence_token="stop-1") == "deferred"


def _status_terminated(reg: SessionStore, p: StubCloud, sid: str, sealed: str) -> None:
    _svc().spawn(sid, sealed, attempt_id="t1")
    assert _svc().terminate(sid, reason="requested", fence_token="stop-1") == "terminated"


def _status_failed(reg: SessionStore, p: StubCloud, sid: str, sealed: str) -> None:
    p.refuse_create = AtlasError("bad key", kind="unauthorized", status=401, provider="mock")
    try:
        _svc().spawn(sid, sealed, attempt_id="t1")
    except AtlasError as exc:
        _svc().spawn_failed(sid, exc)
    p.refuse_create = None  # the cloud would accept a create now: none may be sent


SETUPS = {
    "spawning": (_status_spawning, 1, "running"),
    "running": (_status_running, 1, "running"),
    "terminating_with_compute_id": (_status_terminating_with_pod, 1, "terminating"),
    "terminating_without_compute_id": (_status_terminating_without_pod, 0, "terminated"),
    "terminated": (_status_terminated, 1, "terminated"),
    "failed": (_status_failed, 0, "failed"),
}


def _record(reg: SessionStore, sid: str) -> SessionRecord:
    record = reg.get(sid)
    assert record is not None
    return record


@pytest.mark.parametrize("status", list(SETUPS))
@pytest.mark.parametrize("attempt_id", ["t1", "resent"])
def test_redelivered_spawn_never_creates_a_second_pod(
    stub: tuple[SessionStore, StubCloud], status: str, attempt_id: str
) -> None:
    """The same spawn delivered again (same task id) or re-sent (new id), in every
    status: at most the one create the first delivery made."""
    reg, provider = stub
    setup, creates, final = SETUPS[status]
    sid, sealed = new_session(reg, provider="mock")
    setup(reg, provider, sid, sealed)
    if status != "terminating_without_compute_id":
        assert _record(reg, sid).status == status.split("_")[0]
    before = _record(reg, sid)

    for _ in range(2):  # and once more, for good measure
        _svc().spawn(sid, sealed, attempt_id=attempt_id)

    assert provider.creates.get(f"atlas-{sid}", 0) == creates, provider.calls
    assert len(provider.live()) <= 1
    after = _record(reg, sid)
    assert after.status == final
    if status == "failed":
        assert after.error == before.error  # the first error stands
        assert [e.data.get("status") for e in events.history(sid) if e.type == "status"] == [
            "failed"
        ]
    if final == "running":
        assert after.compute_id == provider.live()[0].id


def test_duplicate_delivery_of_a_live_spawn_does_not_share_its_lease(
    stub: tuple[SessionStore, StubCloud],
) -> None:
    """The same task delivered twice while the first execution is still creating (a
    visibility timeout shorter than a slow spawn): the duplicate must leave the session
    to it instead of sharing its lease and creating too."""
    reg, provider = stub
    sid, sealed = new_session(reg, provider="mock")
    duplicate: dict[str, Any] = {}
    original_create = provider.create_compute

    def create_while_a_duplicate_arrives(request: ComputeRequest) -> Compute:
        duplicate.update(_svc().spawn(sid, sealed, attempt_id="t1"))
        return original_create(request)

    provider.create_compute = create_while_a_duplicate_arrives  # type: ignore[method-assign]
    result = _svc().spawn(sid, sealed, attempt_id="t1")

    assert duplicate == {"id": None, "status": "spawning"}
    assert provider.creates == {f"atlas-{sid}": 1}
    assert _record(reg, sid).status == "running" and result["id"] == provider.live()[0].id
    running = [e for e in events.history(sid) if e.data.get("status") == "running"]
    assert len(running) == 1  # published with the record, once


def test_redelivery_takes_over_the_lease_of_a_dead_execution(
    stub: tuple[SessionStore, StubCloud],
) -> None:
    """The worker died right after its create: its lease is no longer renewed, so the
    redelivery of the same task waits for it to expire, then adopts the pod by name."""
    reg, provider = stub
    sid, sealed = new_session(reg, provider="mock")
    provider.die_after_create = True
    with pytest.raises(WorkerDied):
        _svc().spawn(sid, sealed, attempt_id="t1")
    assert reg.spawn_lease_holder(sid)  # left behind by the dead execution

    result = _svc().spawn(sid, sealed, attempt_id="t1")

    assert provider.creates == {f"atlas-{sid}": 1}
    assert _record(reg, sid).status == "running"
    assert result["id"] == provider.live()[0].id


def test_settings_expose_the_lookup_wait(stub: tuple[SessionStore, StubCloud]) -> None:
    assert get_settings().create_lookup_wait_ms == 200
    field = type(get_settings()).model_fields["create_lookup_wait_ms"]
    assert field.description and field.default == 15_000


def test_lost_spawn_of_a_session_stopped_before_its_pod_is_re_sent(
    stub: tuple[SessionStore, StubCloud], redis_client: redis.Redis
) -> None:
    """A stop before the pod existed defers the end to the spawn; when that spawn's
    message is lost, the stalled-spawn scan must re-send it, or the session stays
    ``terminating`` until its intent expires."""
    reg, provider = stub
    sid, sealed = new_session(reg, provider="mock")
    assert _svc().terminate(sid, reason="requested", fence_token="stop-1") == "deferred"
    redis_client.zadd("atlas:intents", {sid: reg.now_ms() + 1_000}, xx=True)  # stalled

    resent = reg.claim_stalled_spawns(stall_ms=600_000 - 5_000, max_resends=3)

    assert resent == [(sid, sealed)]
    assert _svc().spawn(sid, sealed, attempt_id="resent")["status"] == "terminated"
    assert _record(reg, sid).status == "terminated"
    assert provider.creates == {}
